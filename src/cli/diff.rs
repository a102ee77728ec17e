//! `capgate policy diff`: the permission delta between two versions of a policy.

use std::path::{Path, PathBuf};

use capgate::diff::{Delta, Effect, rules::RulesDelta};
use capgate::policy::Policy;
use serde_json::json;

use super::exit::CliError;
use super::run::Source;
use super::{Report, audit, safe};

/// Reads a policy and its rules files as they are: a diff is a review, so signatures are not
/// needed (nor checked).
pub(super) fn read(path: &Path) -> Result<(Policy, Option<time::OffsetDateTime>), CliError> {
    let bundle = capgate::signing::danger::unverified_policy(path)?;
    Ok((capgate::policy::parse(&bundle)?, bundle.header().expires))
}

/// The structural delta of two policies read with [`read`], expiry included.
pub(super) fn delta(
    old: &(Policy, Option<time::OffsetDateTime>),
    new: &(Policy, Option<time::OffsetDateTime>),
) -> Delta {
    let mut d = capgate::diff::diff(&old.0, &new.0);
    d.expires(old.1, new.1);
    d
}

/// The delta as text: one line per change, by component, then the rules' effect.
pub(super) fn render(old: &Policy, new: &Policy, delta: &Delta, rules: &RulesDelta) -> String {
    let mut text = format!(
        "policy `{}` version {} → `{}` version {}",
        old.name, old.version, new.name, new.version
    );
    let mut current: Option<Option<&str>> = None;
    for c in &delta.changes {
        let group = c.component.as_deref();
        if current != Some(group) {
            text.push_str(&format!("\n{}:", group.unwrap_or("policy")));
            current = Some(group);
        }
        let mark = match c.effect {
            Effect::Added => '+',
            Effect::Widened => '^',
            Effect::Narrowed => 'v',
            Effect::Removed => '-',
            Effect::Changed => '~',
        };
        text.push_str(&format!(
            "\n  {mark} {:<8} {}: {}",
            c.effect.as_str(),
            c.key,
            safe(&c.what)
        ));
    }
    if delta.changes.is_empty() {
        text.push_str("\nno change to grants, limits, settings or rules");
    }
    match rules {
        RulesDelta::Same => {}
        RulesDelta::Decided { changes } if changes.is_empty() => text
            .push_str("\nrules: the enforced rules decide every request the same (proved by cvc5)"),
        RulesDelta::Decided { changes } => {
            text.push_str(
                "\nrules: requests whose decision changes (proved by cvc5; one example each):",
            );
            for c in changes {
                text.push_str(&format!(
                    "\n  {} {}: {}",
                    if c.newly_allowed {
                        "+ newly allowed"
                    } else {
                        "- newly denied "
                    },
                    c.action,
                    safe(&c.example)
                ));
            }
        }
        RulesDelta::Undecided { why } => text.push_str(&format!(
            "\nrules: the rules changed, and which requests that affects was not decided: {}",
            safe(why)
        )),
    }
    // A changed rule counts even when the solver found no request it changes: the solver
    // skips a rule whose evaluation errors, where capgate denies.
    let more = delta
        .changes
        .iter()
        .filter(|c| c.effect.grants_more())
        .count();
    text.push_str(&format!(
        "\n{} change(s), {more} of which may allow more",
        delta.changes.len()
    ));
    if let RulesDelta::Decided { changes } = rules {
        let allowing = changes.iter().filter(|c| c.newly_allowed).count();
        if allowing > 0 {
            text.push_str(&format!(
                "; the rules newly allow requests of {allowing} action(s)"
            ));
        }
    }
    text
}

pub(super) fn diff(old: &Path, new: &Path, logs: &[PathBuf]) -> Result<Report, CliError> {
    let (a, b) = (read(old)?, read(new)?);
    let delta = delta(&a, &b);
    let (a, b) = (a.0, b.0);
    let rules = capgate::diff::rules::delta(&a, &b);
    let mut text = render(&a, &b, &delta, &rules);
    let mut replayed = serde_json::Value::Null;
    if !logs.is_empty() {
        let src = Source {
            policy: new,
            trust: None,
            state_dir: None,
            allow_unsigned: true,
            audit: None,
            audit_key: None,
            audit_otlp: None,
            audit_otlp_ca: None,
            policy_name: None,
        };
        let r = audit::replay(logs, &src)?;
        text.push_str(&format!("\nrecorded requests: {}", r.text));
        replayed = r.json;
    }
    Ok(Report::new(
        text,
        json!({"old": {"name": a.name, "version": a.version}, "new": {"name": b.name, "version": b.version},
               "changes": delta.changes, "rules": rules, "replay": replayed}),
    ))
}
