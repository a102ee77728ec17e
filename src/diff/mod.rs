//! The permission delta between two versions of a policy: every grant added, removed,
//! widened or narrowed, every limit raised or lowered, every rule added, removed or changed,
//! and (with an SMT solver, see [`rules`]) the requests a change of rules newly allows or
//! denies.
//!
//! The structural part is sound: anything the new version grants that the old did not is
//! listed, as `added` unless it is recognisably the widening of an old grant (the same host
//! with a larger port range, a shorter HTTP path prefix, more methods, more functions,
//! read-only → read-write). Whether a change of rules changes any decision needs the solver;
//! without one the report says it could not decide.

mod grants;
pub mod rules;

use std::collections::BTreeMap;

use crate::policy::{Limits, Policy, defaults};

/// How a change moves a policy's permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Something new is allowed.
    Added,
    /// Something allowed before is allowed more broadly.
    Widened,
    /// Something allowed before is allowed more narrowly.
    Narrowed,
    /// Something allowed before is not any more.
    Removed,
    /// A change whose direction is not one of the above (a new artifact pin, another
    /// environment, a rule rewritten).
    Changed,
}

impl Effect {
    /// The word the report uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Added => "added",
            Effect::Widened => "widened",
            Effect::Narrowed => "narrowed",
            Effect::Removed => "removed",
            Effect::Changed => "changed",
        }
    }

    /// Whether it may allow something the old version did not.
    pub fn grants_more(self) -> bool {
        matches!(self, Effect::Added | Effect::Widened | Effect::Changed)
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Change {
    /// The component it is in (`None` for the policy's rules and audit settings).
    pub component: Option<String>,
    /// The key it is under (`files`, `network.connect`, `limits.memory`, `rules`, ...).
    pub key: String,
    /// Its direction.
    pub effect: Effect,
    /// What changed, e.g. `/data: read-only → read-write`.
    pub what: String,
}

/// Every difference between two versions.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct Delta {
    /// The differences, component by component, then the policy-wide ones.
    pub changes: Vec<Change>,
}

impl Delta {
    /// Adds the change of the policies' `expires` (from their headers), if any: a later
    /// expiry, or none, keeps the policy valid for longer.
    pub fn expires(
        &mut self,
        old: Option<time::OffsetDateTime>,
        new: Option<time::OffsetDateTime>,
    ) {
        let show = |t: Option<time::OffsetDateTime>| {
            t.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "never".into())
        };
        let effect = match (old, new) {
            (a, b) if a == b => return,
            (_, None) => Effect::Widened,
            (None, Some(_)) => Effect::Narrowed,
            (Some(a), Some(b)) if b > a => Effect::Widened,
            _ => Effect::Narrowed,
        };
        self.changes.push(Change {
            component: None,
            key: "expires".into(),
            effect,
            what: format!("{} → {}", show(old), show(new)),
        });
    }

    /// Whether any change may allow something the old version did not.
    pub fn grants_more(&self) -> bool {
        self.changes.iter().any(|c| c.effect.grants_more())
    }
}

/// Collects changes for one component (or the policy).
pub(crate) struct Out<'a> {
    component: Option<&'a str>,
    changes: &'a mut Vec<Change>,
}

impl Out<'_> {
    pub(crate) fn push(&mut self, key: &str, effect: Effect, what: impl Into<String>) {
        self.changes.push(Change {
            component: self.component.map(str::to_owned),
            key: key.to_owned(),
            effect,
            what: what.into(),
        });
    }
}

/// The structural delta from `old` to `new`: grants, limits, settings and rules (by id and
/// text). Which requests a change of rules affects is [`rules::delta`]'s question.
pub fn diff(old: &Policy, new: &Policy) -> Delta {
    // Host directories and artifacts are compared as each policy names them, relative to its
    // own directory, so two copies of a policy in different places compare equal.
    let (old, new) = (&relative(old), &relative(new));
    let mut changes = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        old.components.keys().chain(new.components.keys()).collect();
    for name in names {
        let mut out = Out {
            component: Some(name),
            changes: &mut changes,
        };
        match (old.components.get(name), new.components.get(name)) {
            (None, Some(c)) => {
                out.push(
                    "component",
                    Effect::Added,
                    format!("new component, {}", grants::summary(c)),
                );
                grants::component(&mut out, &grants::empty_like(c), c);
            }
            (Some(c), None) => out.push(
                "component",
                Effect::Removed,
                format!("component removed, with {}", grants::summary(c)),
            ),
            (Some(a), Some(b)) => grants::component(&mut out, a, b),
            (None, None) => {}
        }
    }
    // Rules may name grants by id (`context.grants.contains("c.files[0]")`), and ids are
    // positions: a grant moved to another position changes what such a rule decides.
    let names_grants = |p: &Policy| p.rules.iter().any(|r| r.text.contains("grants"));
    if names_grants(old) || names_grants(new) {
        for (name, b) in &new.components {
            if let Some(a) = old.components.get(name)
                && grants::ids(a) != grants::ids(b)
            {
                let mut out = Out {
                    component: Some(name),
                    changes: &mut changes,
                };
                out.push(
                    "grant ids",
                    Effect::Changed,
                    "a grant id now names another grant, or none, while the rules name grants by id (`context.grants`): what such a rule decides may change",
                );
            }
        }
    }
    let mut out = Out {
        component: None,
        changes: &mut changes,
    };
    audit(&mut out, old, new);
    rules_by_id(&mut out, old, new);
    Delta { changes }
}

/// `p` with host directories and artifacts relative to its directory where they lie below it.
fn relative(p: &Policy) -> Policy {
    let dir = p
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let mut p = p.clone();
    if let Some(log) = &p.audit.log
        && let Ok(r) = log.strip_prefix(&dir)
    {
        p.audit.log = Some(r.to_owned());
    }
    for c in p.components.values_mut() {
        if let Ok(r) = c.artifact.strip_prefix(&dir) {
            c.artifact = r.to_owned();
        }
        for f in &mut c.files {
            if let Ok(r) = f.host.strip_prefix(&dir) {
                f.host = if r.as_os_str().is_empty() {
                    ".".into()
                } else {
                    r.to_owned()
                };
            }
        }
    }
    p
}

/// A limit's value as it applies (`None` for timeout and fuel is the default).
fn limit_values(l: &Limits) -> [(&'static str, u128, String); 8] {
    let timeout = l.timeout.unwrap_or(defaults::TIMEOUT);
    let fuel = l.fuel.unwrap_or(defaults::FUEL);
    [
        ("memory", u128::from(l.memory.bytes()), l.memory.to_string()),
        (
            "timeout",
            timeout.duration().as_millis(),
            timeout.to_string(),
        ),
        ("fuel", u128::from(fuel), fuel.to_string()),
        (
            "instances",
            u128::from(l.instances),
            l.instances.to_string(),
        ),
        ("files", u128::from(l.files), l.files.to_string()),
        ("sockets", u128::from(l.sockets), l.sockets.to_string()),
        ("body", u128::from(l.body.bytes()), l.body.to_string()),
        ("output", u128::from(l.output.bytes()), l.output.to_string()),
    ]
}

pub(crate) fn limits(out: &mut Out<'_>, old: &Limits, new: &Limits) {
    for ((key, a, at), (_, b, bt)) in limit_values(old).into_iter().zip(limit_values(new)) {
        if a != b {
            let effect = if b > a {
                Effect::Widened
            } else {
                Effect::Narrowed
            };
            let verb = if b > a { "raised" } else { "lowered" };
            out.push(
                &format!("limits.{key}"),
                effect,
                format!("{verb}: {at} → {bt}"),
            );
        }
    }
}

fn audit(out: &mut Out<'_>, old: &Policy, new: &Policy) {
    let (a, b) = (&old.audit, &new.audit);
    if a.level != b.level {
        out.push(
            "audit.level",
            Effect::Changed,
            format!("{:?} → {:?}", a.level, b.level).to_lowercase(),
        );
    }
    if a.on_failure != b.on_failure {
        out.push(
            "audit.on_failure",
            Effect::Changed,
            format!("{:?} → {:?}", a.on_failure, b.on_failure).to_lowercase(),
        );
    }
    if a.durability != b.durability {
        out.push(
            "audit.durability",
            Effect::Changed,
            format!("{:?} → {:?}", a.durability, b.durability).to_lowercase(),
        );
    }
    if a.checkpoint_every != b.checkpoint_every {
        out.push(
            "audit.checkpoint_every",
            Effect::Changed,
            format!("{} → {}", a.checkpoint_every, b.checkpoint_every),
        );
    }
    if a.rotate != b.rotate {
        let show = |r: Option<crate::policy::units::ByteSize>| {
            r.map_or("none".to_owned(), |r| r.to_string())
        };
        out.push(
            "audit.rotate",
            Effect::Changed,
            format!("{} → {}", show(a.rotate), show(b.rotate)),
        );
    }
    if a.log != b.log {
        out.push(
            "audit.log",
            Effect::Changed,
            format!(
                "{} → {}",
                a.log
                    .as_ref()
                    .map_or("none".into(), |p| p.display().to_string()),
                b.log
                    .as_ref()
                    .map_or("none".into(), |p| p.display().to_string())
            ),
        );
    }
}

/// The rules of a policy by `@id`, as normalised Cedar text with their mode.
fn rule_texts(p: &Policy) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for src in &p.rules {
        if let Ok(set) = src.text.parse::<cedar_policy::PolicySet>() {
            for r in set.policies() {
                if let Some(id) = r.annotation("id") {
                    out.insert(id.to_owned(), r.to_string());
                }
            }
        }
    }
    out
}

fn rules_by_id(out: &mut Out<'_>, old: &Policy, new: &Policy) {
    let (a, b) = (rule_texts(old), rule_texts(new));
    let kind = |t: &str| {
        let mode = if t.contains("@mode(\"report\")") {
            ", report-only"
        } else {
            ""
        };
        let effect = if t.contains("forbid") && !t.contains("permit") {
            "forbid"
        } else {
            "permit"
        };
        format!("{effect}{mode}")
    };
    for (id, t) in &b {
        match a.get(id) {
            None => out.push(
                "rules",
                Effect::Changed,
                format!("rule `{id}` added ({})", kind(t)),
            ),
            Some(o) if o != t => out.push(
                "rules",
                Effect::Changed,
                format!("rule `{id}` changed ({} → {})", kind(o), kind(t)),
            ),
            Some(_) => {}
        }
    }
    for (id, t) in &a {
        if !b.contains_key(id) {
            out.push(
                "rules",
                Effect::Changed,
                format!("rule `{id}` removed ({})", kind(t)),
            );
        }
    }
}

/// Whether the two versions' rules differ at all (by id, text or mode).
pub fn rules_differ(old: &Policy, new: &Policy) -> bool {
    rule_texts(old) != rule_texts(new)
}
