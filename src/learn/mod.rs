//! Least privilege from evidence: the narrowest policy that still allows every request a
//! broad policy allowed in the audit logs of real runs.
//!
//! A [`Learner`] is fed the decision records of logs written under the broad policy with
//! `audit: { level: all }`, and [`Learner::finish`] writes the learned policy as YAML: for each
//! component, only the grants some allowed, enforced record used, each as narrow as the
//! records allow, and each commented with how many records support it. What the logs cannot
//! show (the artifact, environment, arguments, standard streams, limits, rules and audit
//! settings) is kept as the broad policy has it. Proving the result (replaying the logs under
//! it) is the caller's step: `capgate policy learn` does it with
//! [`audit::replay`](crate::audit::replay).
//!
//! How each kind of grant narrows:
//! - **Files**: a mount some record reached is kept, read-only unless a write was allowed in
//!   it, and moved down to the deepest directory that holds every path reached in it (a path
//!   that is a directory on the host counts as itself, anything else as its parent). A mount
//!   the guest names by a relative name, or that holds the component's `cwd` above that
//!   directory, is kept where it is. Mounts no record reached are dropped.
//! - **Sockets**: exact addresses and ports (`tcp://10.0.0.5:5432`).
//! - **Name lookups**: exact names.
//! - **HTTP**: per scheme, host and port, the longest path prefix (in whole segments) of the
//!   paths requested, and exactly the methods used.
//! - **Calls**: per callee and interface, exactly the functions called.

mod emit;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use emit::{audit_section, component, q, shown, within};

use crate::VerifiedPolicy;
use crate::audit::{DecisionRecord, Verdict};
use crate::authz::{Action, Request};
use crate::policy::pattern::HostPattern;

/// Whether a request names one concrete thing: a normalised absolute path, a DNS name, a
/// host without wildcards. A forged record's pattern (`*.example.com`) is not a request.
fn concrete(r: &Request) -> bool {
    let plain = |s: &str| !s.is_empty() && !s.contains(['*', ' ', '\n', '\t', '"']);
    match r {
        Request::File { path, .. } => {
            path.starts_with('/')
                && !path.contains("//")
                && !path.split('/').any(|c| c == "." || c == "..")
        }
        Request::Lookup { name } => plain(name),
        Request::Http { host, path, .. } => {
            plain(host) && path.starts_with('/') && !path.split('/').any(|c| c == "." || c == "..")
        }
        Request::Socket { .. } | Request::Call { .. } => true,
    }
}

/// What one component was seen doing.
#[derive(Default)]
pub(super) struct Seen {
    /// Allowed file accesses by mount (its guest path), then by path: (reads, writes).
    files: BTreeMap<String, BTreeMap<String, (u64, u64)>>,
    connect: BTreeMap<String, u64>,
    bind: BTreeMap<String, u64>,
    udp: BTreeMap<String, u64>,
    lookup: BTreeMap<String, u64>,
    /// By (scheme, host, port): methods, paths and their counts.
    /// By (the grant that allowed them, scheme, host, port).
    http: BTreeMap<(String, String, String, u16), Http>,
    /// By (callee, interface): functions and their counts.
    calls: BTreeMap<(String, String), BTreeMap<String, u64>>,
    /// The artifact digests its records name.
    sha256: BTreeSet<String>,
}

#[derive(Default)]
pub(super) struct Http {
    methods: BTreeSet<String>,
    paths: BTreeMap<String, u64>,
}

/// Collects the allowed decisions of audit logs and writes the policy they justify.
pub struct Learner<'p> {
    verified: &'p VerifiedPolicy,
    seen: BTreeMap<String, Seen>,
    /// Allowed, enforced records of this policy's components that were used.
    used: u64,
    /// Records skipped: denials, report-only records, other policies' records.
    skipped: u64,
    /// Records that could not be read as a concrete request of their action.
    malformed: u64,
    /// Allowed records whose request the broad policy does not allow now (or whose request
    /// the SSRF guard refused after the grants allowed it).
    not_allowed: u64,
    /// The distinct requests learned from, by component.
    evidence: std::collections::HashSet<(String, Request)>,
}

/// The learned policy and what it was learned from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Learned {
    /// The policy, as YAML (format 1), unsigned.
    pub yaml: String,
    /// Allowed decisions it was learned from.
    pub used: u64,
    /// Records that were not evidence: denials, report-only decisions, and decisions of
    /// components the broad policy does not have.
    pub skipped: u64,
    /// Records of an allowed decision whose request could not be read as a concrete request.
    pub malformed: u64,
    /// Records of an allowed decision the broad policy does not allow when it decides their
    /// request again (a record of another version, or forged), or whose request the SSRF
    /// guard refused after the grants allowed it.
    pub not_allowed: u64,
    /// The distinct requests it was learned from, by component: each must be allowed by the
    /// learned policy (the proof `capgate policy learn` runs).
    pub evidence: Vec<(String, Request)>,
}

impl<'p> Learner<'p> {
    /// A learner for the broad `policy` the logs were written under.
    pub fn new(verified: &'p VerifiedPolicy) -> Self {
        Self {
            verified,
            seen: BTreeMap::new(),
            used: 0,
            skipped: 0,
            malformed: 0,
            not_allowed: 0,
            evidence: Default::default(),
        }
    }

    /// Takes one decision record as evidence, if it is an allowed, enforced decision of one
    /// of the broad policy's components, made under a policy of its name, whose request the
    /// broad policy still allows when decided again. A record is evidence of its request only:
    /// every learned value is a concrete request the broad policy allows, never a pattern
    /// copied from a record.
    pub fn add(&mut self, record: &DecisionRecord) {
        let n = record.decisions();
        let p = self.verified.policy();
        if record.decision != Verdict::Allow
            || !record.was_enforced()
            || record.policy.name != p.name
            || !p.components.contains_key(&record.component)
        {
            self.skipped += n;
            return;
        }
        let Ok(request) = record.request() else {
            self.malformed += n;
            return;
        };
        if !concrete(&request) {
            self.malformed += n;
            return;
        }
        // Decided again, under the broad policy: a forged or foreign record teaches nothing
        // the broad policy does not allow, and the grants that allow it are known.
        let decided = self
            .verified
            .authority()
            .decide_uncached(&record.component, &request);
        if !decided.allowed {
            self.not_allowed += n;
            return;
        }
        let spec = &p.components[&record.component];
        let seen = self.seen.entry(record.component.clone()).or_default();
        match &request {
            // The mount a path falls under is the longest that holds it.
            Request::File { write, path } => {
                let Some(f) = spec
                    .files
                    .iter()
                    .filter(|f| within(path, &f.guest))
                    .max_by_key(|f| f.guest.len())
                else {
                    self.malformed += n;
                    return;
                };
                let e = seen
                    .files
                    .entry(f.guest.clone())
                    .or_default()
                    .entry(path.clone())
                    .or_default();
                if *write {
                    e.1 += n;
                } else {
                    e.0 += n;
                }
            }
            Request::Socket { action, .. } => {
                let map = match action {
                    Action::NetConnect => &mut seen.connect,
                    Action::NetBind => &mut seen.bind,
                    _ => &mut seen.udp,
                };
                count(map, &request.resource(), n);
            }
            Request::Lookup { name } => count(&mut seen.lookup, name, n),
            Request::Http {
                method,
                scheme,
                host,
                port,
                path,
            } => {
                // Learned per grant that allowed it, so no learned entry joins what two
                // grants allowed separately.
                let Some(grant) = spec
                    .http
                    .iter()
                    .find(|g| decided.reasons.iter().any(|r| r == g.id.as_str()))
                else {
                    self.not_allowed += n;
                    return;
                };
                // A request to an internal address is sent only when its grant names the
                // address itself; the guard refused any other after this record was written.
                // A learned grant naming the address would lift the guard: not learned.
                let names_it = match grant.url.host() {
                    HostPattern::Ip(_) | HostPattern::Cidr(_) => true,
                    HostPattern::Name(n) => n == "localhost",
                    HostPattern::Any | HostPattern::Subdomain(_) => false,
                };
                if !names_it
                    && (host.parse::<std::net::IpAddr>().is_ok()
                        || host
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .parse::<std::net::IpAddr>()
                            .is_ok()
                        || host.eq_ignore_ascii_case("localhost"))
                {
                    self.not_allowed += n;
                    return;
                }
                let h = seen
                    .http
                    .entry((
                        grant.id.to_string(),
                        scheme.as_str().to_owned(),
                        host.clone(),
                        *port,
                    ))
                    .or_default();
                h.methods.insert(method.clone());
                *h.paths.entry(path.clone()).or_default() += n;
            }
            Request::Call {
                component,
                interface,
                function,
            } => {
                *seen
                    .calls
                    .entry((component.clone(), interface.clone()))
                    .or_default()
                    .entry(function.clone())
                    .or_default() += n;
            }
        }
        if record.sha256.parse::<capgate_signing::Sha256>().is_ok() {
            seen.sha256.insert(record.sha256.clone());
        }
        self.evidence.insert((record.component.clone(), request));
        self.used += n;
    }

    /// The learned policy. `sources` names the logs in its header comment.
    pub fn finish(self, sources: &[PathBuf]) -> Learned {
        let p = self.verified.policy();
        let dir = p
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        let rel = |path: &Path| shown(path, &base);
        let mut y = String::new();
        let logs: Vec<String> = sources.iter().map(|s| s.display().to_string()).collect();
        let _ = writeln!(
            y,
            "# Learned by `capgate policy learn` from {} allowed decision(s) in {}, made under\n\
             # `{}` version {}. Each grant is only what those decisions used, with the number of\n\
             # records behind it; grants no record used are listed as dropped. Review it, then sign\n\
             # it: it is not signed, and sets no `expires`.",
            self.used,
            logs.join(", "),
            p.name,
            p.version
        );
        let _ = writeln!(
            y,
            "capgate: 1\nname: {}\nversion: {}",
            p.name,
            p.version + 1
        );
        if !p.rules.is_empty() {
            let names: Vec<String> = p.rules.iter().map(|r| q(&r.name)).collect();
            let _ = writeln!(y, "rules: [{}]", names.join(", "));
        }
        y.push_str(&audit_section(p, &rel));
        y.push_str("components:\n");
        for (name, c) in &p.components {
            let seen = self.seen.get(name);
            component(&mut y, name, c, seen, &rel);
        }
        Learned {
            yaml: y,
            used: self.used,
            skipped: self.skipped,
            malformed: self.malformed,
            not_allowed: self.not_allowed,
            evidence: self.evidence.into_iter().collect(),
        }
    }
}

fn count(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    *map.entry(key.to_owned()).or_default() += n;
}
