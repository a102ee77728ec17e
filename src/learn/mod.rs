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

use crate::audit::{DecisionRecord, Verdict};
use crate::policy::Policy;

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
    http: BTreeMap<(String, String, u16), Http>,
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
    policy: &'p Policy,
    seen: BTreeMap<String, Seen>,
    /// Allowed, enforced records of this policy's components that were used.
    used: u64,
    /// Records skipped: denials, report-only records, other policies' components.
    skipped: u64,
    /// Records that could not be read as a request of their action.
    malformed: u64,
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
    /// Records of an allowed decision whose resource could not be read.
    pub malformed: u64,
}

impl<'p> Learner<'p> {
    /// A learner for the broad `policy` the logs were written under.
    pub fn new(policy: &'p Policy) -> Self {
        Self {
            policy,
            seen: BTreeMap::new(),
            used: 0,
            skipped: 0,
            malformed: 0,
        }
    }

    /// Takes one decision record as evidence, if it is an allowed, enforced decision of one
    /// of the policy's components.
    pub fn add(&mut self, record: &DecisionRecord) {
        let n = record.decisions();
        if record.decision != Verdict::Allow
            || !record.was_enforced()
            || !self.policy.components.contains_key(&record.component)
        {
            self.skipped += n;
            return;
        }
        let spec = &self.policy.components[&record.component];
        let seen = self.seen.entry(record.component.clone()).or_default();
        let ctx = |k: &str| record.context.get(k).and_then(|v| v.as_str());
        let ok = match record.action.as_str() {
            // The mount a path falls under is the longest that holds it.
            a @ ("fs.read" | "fs.write") => match spec
                .files
                .iter()
                .filter(|f| within(&record.resource, &f.guest))
                .max_by_key(|f| f.guest.len())
            {
                Some(f) => {
                    let mount = &f.guest;
                    let e = seen
                        .files
                        .entry(mount.to_owned())
                        .or_default()
                        .entry(record.resource.clone())
                        .or_default();
                    if a == "fs.write" {
                        e.1 += n;
                    } else {
                        e.0 += n;
                    }
                    true
                }
                None => false,
            },
            "net.connect" => count(&mut seen.connect, &record.resource, n),
            "net.bind" => count(&mut seen.bind, &record.resource, n),
            "net.udp" => count(&mut seen.udp, &record.resource, n),
            "net.lookup" => count(&mut seen.lookup, &record.resource, n),
            "http.request" => match (split_url(&record.resource), ctx("method")) {
                (Some((scheme, host, port, path)), Some(method)) => {
                    let h = seen.http.entry((scheme, host, port)).or_default();
                    h.methods.insert(method.to_owned());
                    *h.paths.entry(path).or_default() += n;
                    true
                }
                _ => false,
            },
            "call" => match (ctx("component"), ctx("interface"), ctx("function")) {
                (Some(c), Some(i), Some(f)) => {
                    *seen
                        .calls
                        .entry((c.to_owned(), i.to_owned()))
                        .or_default()
                        .entry(f.to_owned())
                        .or_default() += n;
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if ok {
            if !record.sha256.is_empty() {
                seen.sha256.insert(record.sha256.clone());
            }
            self.used += n;
        } else {
            self.malformed += n;
        }
    }

    /// The learned policy. `sources` names the logs in its header comment.
    pub fn finish(self, sources: &[PathBuf]) -> Learned {
        let p = self.policy;
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
        }
    }
}

fn count(map: &mut BTreeMap<String, u64>, key: &str, n: u64) -> bool {
    *map.entry(key.to_owned()).or_default() += n;
    true
}

/// `scheme://host:port/path` as its parts; `None` when it is not one.
fn split_url(resource: &str) -> Option<(String, String, u16, String)> {
    let (scheme, rest) = resource.split_once("://")?;
    let slash = rest.find('/')?;
    let (authority, path) = rest.split_at(slash);
    let (host, port) = authority.rsplit_once(':')?;
    Some((
        scheme.to_owned(),
        host.to_owned(),
        port.parse().ok()?,
        path.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_their_parts() {
        assert_eq!(
            split_url("https://api.example.com:443/v1/x"),
            Some((
                "https".into(),
                "api.example.com".into(),
                443,
                "/v1/x".into()
            ))
        );
        assert_eq!(
            split_url("http://[::1]:8080/"),
            Some(("http".into(), "[::1]".into(), 8080, "/".into()))
        );
        assert_eq!(split_url("nonsense"), None);
    }
}
