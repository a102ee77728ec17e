//! The records of the audit log: what each line says, and how a recorded request is rebuilt
//! so that it can be decided again.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::authz::{Action, Decision, Request};
use crate::policy::pattern::HttpScheme;

/// The policy a decision was made under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    /// The policy's `name`.
    pub name: String,
    /// Its `version`.
    pub version: u64,
    /// SHA-256 of the policy YAML.
    pub sha256: String,
}

impl PolicyRef {
    /// The reference to a verified policy: its name, version and YAML digest.
    pub fn of(policy: &crate::VerifiedPolicy) -> Self {
        let p = policy.policy();
        Self {
            name: p.name.clone(),
            version: p.version,
            sha256: p.sha256.to_string(),
        }
    }
}

/// Allow or deny, as written in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The request went ahead.
    Allow,
    /// The request was refused.
    Deny,
}

impl Verdict {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    fn of(allowed: bool) -> Self {
        if allowed { Self::Allow } else { Self::Deny }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decision, as recorded (without the chain fields `seq`, `ts` and `prev`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    /// The component that asked.
    pub component: String,
    /// SHA-256 of the component's artifact (empty if the policy has no such component).
    pub sha256: String,
    /// The action (`http.request`, `call`, ...).
    pub action: String,
    /// The resource, as one line.
    pub resource: String,
    /// What else the decision used besides the resource (HTTP method, called function, ...),
    /// and salted hashes of sensitive values (query strings, call arguments).
    pub context: Map<String, Value>,
    /// The decision.
    pub decision: Verdict,
    /// Ids of the grants and rules that decided.
    pub reasons: Vec<String>,
    /// Problems met while deciding (any makes the decision a deny).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The policy.
    pub policy: PolicyRef,
    /// How many identical denials this record stands for, when repeats were folded into it
    /// (absent: one). The record's `ts` is the first of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The time of the last of the folded denials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// `false` for what the policy's report-only rules (`@mode("report")`) would have decided
    /// where that differs from the decision enforced (which has its own record, written just
    /// before when the level keeps it); absent for a decision that was enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<bool>,
}

impl DecisionRecord {
    /// How many decisions this record stands for: `count` if repeats were folded, else one.
    pub fn decisions(&self) -> u64 {
        self.count.unwrap_or(1)
    }

    /// Whether the decision was enforced: `false` for a report-only rule's would-be decision.
    pub fn was_enforced(&self) -> bool {
        self.enforced != Some(false)
    }

    /// The record of `decision` on `request`. `sensitive` values are written as salted hashes
    /// under their names in the context, never in clear.
    pub(crate) fn new(
        policy: PolicyRef,
        component: &str,
        component_sha256: String,
        request: &Request,
        decision: &Decision,
        sensitive: Vec<(&'static str, String)>,
    ) -> Self {
        let mut context = context_of(request);
        for (name, hash) in sensitive {
            context.insert(name.to_owned(), Value::String(hash));
        }
        Self {
            component: component.to_owned(),
            sha256: component_sha256,
            action: request.action().as_str().to_owned(),
            resource: request.resource(),
            context,
            decision: Verdict::of(decision.allowed),
            reasons: decision.reasons.clone(),
            errors: decision.errors.clone(),
            policy,
            count: None,
            until: None,
            enforced: None,
        }
    }

    /// The request this record was made for, rebuilt from its action, resource and context.
    pub fn request(&self) -> Result<Request, MalformedRecord> {
        self.rebuild().map_err(MalformedRecord)
    }

    fn rebuild(&self) -> Result<Request, String> {
        let ctx = |key: &str| {
            self.context
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("the context has no `{key}`"))
        };
        let action = action_named(&self.action)
            .ok_or_else(|| format!("`{}` is not an action", self.action))?;
        Ok(match action {
            Action::FsRead | Action::FsWrite => {
                if !self.resource.starts_with('/') {
                    return Err(format!("`{}` is not an absolute path", self.resource));
                }
                Request::File {
                    write: action == Action::FsWrite,
                    path: self.resource.clone(),
                }
            }
            Action::NetConnect | Action::NetBind | Action::NetUdp => {
                let want = if action == Action::NetUdp {
                    "udp://"
                } else {
                    "tcp://"
                };
                let addr = self
                    .resource
                    .strip_prefix(want)
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| format!("`{}` is not a `{want}ADDRESS:PORT`", self.resource))?;
                Request::Socket { action, addr }
            }
            Action::NetLookup => Request::Lookup {
                name: self.resource.clone(),
            },
            Action::HttpRequest => {
                let bad = || format!("`{}` is not a `SCHEME://HOST:PORT/PATH`", self.resource);
                let (scheme, rest) = self.resource.split_once("://").ok_or_else(bad)?;
                let scheme = match scheme {
                    "http" => HttpScheme::Http,
                    "https" => HttpScheme::Https,
                    _ => return Err(bad()),
                };
                let slash = rest.find('/').ok_or_else(bad)?;
                let (authority, path) = rest.split_at(slash);
                let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
                Request::Http {
                    method: ctx("method")?.to_owned(),
                    scheme,
                    host: host.to_owned(),
                    port: port.parse().map_err(|_| bad())?,
                    path: path.to_owned(),
                }
            }
            Action::Call => Request::Call {
                component: ctx("component")?.to_owned(),
                interface: ctx("interface")?.to_owned(),
                function: ctx("function")?.to_owned(),
            },
        })
    }
}

/// The action with this Cedar name.
pub(crate) fn action_named(name: &str) -> Option<Action> {
    [
        Action::FsRead,
        Action::FsWrite,
        Action::NetConnect,
        Action::NetBind,
        Action::NetUdp,
        Action::NetLookup,
        Action::HttpRequest,
        Action::Call,
    ]
    .into_iter()
    .find(|a| a.as_str() == name)
}

/// What a decision on `request` used besides its resource line.
fn context_of(request: &Request) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: &str| {
        m.insert(k.to_owned(), Value::String(v.to_owned()));
    };
    match request {
        Request::Http { method, .. } => put("method", method),
        Request::Call {
            component,
            interface,
            function,
        } => {
            put("component", component);
            put("interface", interface);
            put("function", function);
        }
        Request::File { .. } | Request::Socket { .. } | Request::Lookup { .. } => {}
    }
    m
}

/// A stretch of records that could not be written (failure mode `continue`), recorded once
/// the log could be written again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gap {
    /// Always `gap`.
    #[serde(rename = "type")]
    pub kind: GapTag,
    /// How many records were lost.
    pub missed: u64,
    /// When the first lost decision was made.
    pub from: String,
    /// When the last lost decision was made.
    pub to: String,
    /// Why they could not be written (the first error).
    pub error: String,
}

/// The `type` tag of a [`Gap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GapTag {
    /// `gap`.
    #[default]
    Gap,
}

/// A change of the policy a long-running host (`serve --poll`) enforces: a new version
/// activated, one refused (the version before keeps serving), or the one served expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEvent {
    /// Always `policy`.
    #[serde(rename = "type")]
    pub kind: PolicyTag,
    /// What happened.
    pub event: PolicyChange,
    /// Where the policy was read from, as the host was told (a file, or an `oci://`
    /// reference), when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The policy this event is about: the version activated or expired, or (for a refusal)
    /// the version that keeps serving.
    pub policy: PolicyRef,
    /// The version that was served before (for an activation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PolicyRef>,
    /// Why a version was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For each component pulled from an OCI registry, the reference it was pulled by,
    /// pinned by the manifest's digest (`oci://HOST/REPO@sha256:…`): what a tag resolved to.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub components: std::collections::BTreeMap<String, String>,
}

/// The `type` tag of a [`PolicyEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyTag {
    /// `policy`.
    #[default]
    Policy,
}

/// What happened to the policy served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyChange {
    /// A new version was verified and now decides new requests.
    Activated,
    /// A new version failed verification (or cannot serve); the previous one goes on.
    Refused,
    /// The version served expired: nothing is served under it any more.
    Expired,
    /// A policy whose components come from an OCI registry was first used on this host:
    /// the record pins what each reference resolved to.
    Loaded,
}

impl PolicyChange {
    /// `activated`, `refused` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Activated => "activated",
            Self::Refused => "refused",
            Self::Expired => "expired",
            Self::Loaded => "loaded",
        }
    }
}

/// What a sink is asked to write.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Entry {
    /// A decision.
    Decision {
        /// When it was made (RFC 3339, UTC, microseconds).
        ts: String,
        /// The record.
        record: Box<DecisionRecord>,
    },
    /// Records lost while the sink could not write.
    Gap {
        /// When the sink recovered.
        ts: String,
        /// What was lost.
        gap: Gap,
    },
    /// The policy served changed (or was refused, or expired).
    Policy {
        /// When.
        ts: String,
        /// What happened.
        event: Box<PolicyEvent>,
    },
}

impl Entry {
    /// When the entry was made.
    pub fn ts(&self) -> &str {
        match self {
            Self::Decision { ts, .. } | Self::Gap { ts, .. } | Self::Policy { ts, .. } => ts,
        }
    }
}

/// Now, as the log writes timestamps: RFC 3339 in UTC with microseconds.
pub fn timestamp() -> String {
    format_ts(time::OffsetDateTime::now_utc())
}

pub(crate) fn format_ts(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".to_owned())
}

/// A record whose fields do not make a request (what is wrong, in words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedRecord(String);

/// A timestamp that is not RFC 3339.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not an RFC 3339 timestamp ({source}); for example 2026-11-24T18:00:00Z")]
pub struct BadTimestamp {
    text: String,
    #[source]
    source: time::error::Parse,
}

/// Parses a timestamp as `audit query --since/--until` and the log take it (any RFC 3339).
pub fn parse_ts(s: &str) -> Result<time::OffsetDateTime, BadTimestamp> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(
        |source| BadTimestamp {
            text: s.to_owned(),
            source,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_of(request: &Request) -> DecisionRecord {
        DecisionRecord::new(
            PolicyRef {
                name: "p".into(),
                version: 1,
                sha256: String::new(),
            },
            "app",
            String::new(),
            request,
            &Decision::failure("x"),
            vec![("query", "salted".into())],
        )
    }

    #[test]
    fn every_request_kind_round_trips_through_its_record() {
        let requests = [
            Request::File {
                write: true,
                path: "/data/a b/c".into(),
            },
            Request::File {
                write: false,
                path: "/".into(),
            },
            Request::Socket {
                action: Action::NetConnect,
                addr: "[::1]:80".parse().unwrap(),
            },
            Request::Socket {
                action: Action::NetUdp,
                addr: "10.1.2.3:53".parse().unwrap(),
            },
            Request::Socket {
                action: Action::NetBind,
                addr: "0.0.0.0:8080".parse().unwrap(),
            },
            Request::Lookup {
                name: "db.internal".into(),
            },
            Request::Http {
                method: "POST".into(),
                scheme: HttpScheme::Https,
                host: "[::1]".into(),
                port: 8443,
                path: "/v1/x:y".into(),
            },
            Request::Call {
                component: "vault".into(),
                interface: "example:vault/store@0.1.0".into(),
                function: "get-secret".into(),
            },
        ];
        for r in requests {
            let rec = record_of(&r);
            let json = serde_json::to_string(&rec).unwrap();
            let back: DecisionRecord = serde_json::from_str(&json).unwrap();
            assert_eq!(back.request().unwrap(), r, "{json}");
        }
    }

    #[test]
    fn a_record_with_a_broken_resource_says_what_is_wrong() {
        let mut rec = record_of(&Request::Lookup { name: "x".into() });
        rec.action = "net.connect".into();
        assert!(rec.request().unwrap_err().to_string().contains("tcp://"));
        rec.action = "fs.delete".into();
        assert!(
            rec.request()
                .unwrap_err()
                .to_string()
                .contains("not an action")
        );
    }
}
