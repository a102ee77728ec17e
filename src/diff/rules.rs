//! Which requests a change of rules newly allows or denies, decided by Cedar's symbolic
//! compiler (`cedar-policy-symcc`) with the cvc5 SMT solver.
//!
//! Both versions are compared on the same footing: every grant is abstracted into one
//! `permit` that holds when some grant matches the request (`context.grants` is not empty), so
//! the comparison is of the enforced rules alone (grant changes are the structural report's).
//! Report-only rules are left out: they enforce nothing. For each action of the schema the
//! solver answers whether everything the new rules allow the old allowed, and the other way
//! round; where not, it gives a request that shows it.
//!
//! One difference of semantics is stated, not hidden: the solver reasons as Cedar does, where a
//! rule whose evaluation errors (an arithmetic overflow) is skipped, while capgate denies such
//! a request. Rules that cannot error (the usual comparisons of paths, hosts, ports, names)
//! decide the same either way.

use crate::policy::Policy;

/// Whether and how a change of rules changes decisions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum RulesDelta {
    /// The enforced rules are the same (by id and text).
    Same,
    /// The solver decided, for every action: these are the differences (none: equivalent).
    Decided {
        /// One entry per action and direction that changes.
        changes: Vec<RuleChange>,
    },
    /// The rules differ and it could not be decided how.
    Undecided {
        /// Why.
        why: String,
    },
}

/// Requests of one action that a change of rules newly allows or denies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RuleChange {
    /// The action (`fs.read`, `http.request`, ...).
    pub action: String,
    /// `true`: some request the old rules denied is allowed by the new; `false`: the other way.
    pub newly_allowed: bool,
    /// One such request, as the solver gave it.
    pub example: String,
}

/// The enforced rules of `p` as one Cedar text, with every grant abstracted into one permit.
#[cfg_attr(not(feature = "symcc"), allow(dead_code))]
fn abstracted(p: &Policy) -> Result<String, String> {
    let mut text = String::from(
        "@id(\"capgate-any-grant\")\npermit(principal, action, resource)\nwhen { !context.grants.isEmpty() };\n",
    );
    for src in &p.rules {
        let set: cedar_policy::PolicySet = src
            .text
            .parse()
            .map_err(|e| format!("{}: {e}", src.path.display()))?;
        for r in set.policies() {
            if r.annotation("mode") == Some("report") {
                continue;
            }
            text.push_str(&r.to_string());
            text.push('\n');
        }
    }
    Ok(text)
}

/// The solver's answer for `old` → `new`, or why there is none.
pub fn delta(old: &Policy, new: &Policy) -> RulesDelta {
    let (a, b) = match (abstracted(old), abstracted(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return RulesDelta::Undecided { why: e },
    };
    if a == b {
        return RulesDelta::Same;
    }
    solve(&a, &b)
}

#[cfg(not(feature = "symcc"))]
fn solve(_old: &str, _new: &str) -> RulesDelta {
    RulesDelta::Undecided {
        why: "this build has no symbolic compiler (feature `symcc`)".into(),
    }
}

/// The cvc5 binary: `$CVC5`, else `cvc5` on `PATH`.
#[cfg(feature = "symcc")]
fn cvc5() -> Result<std::path::PathBuf, String> {
    if let Some(p) = std::env::var_os("CVC5").filter(|p| !p.is_empty()) {
        let p = std::path::PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "no SMT solver: CVC5 names `{}`, which is not a file",
                p.display()
            ))
        };
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("cvc5"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "no SMT solver: install cvc5 (e.g. `apt-get install cvc5`) or set CVC5 to its path"
                .into()
        })
}

#[cfg(feature = "symcc")]
fn solve(old: &str, new: &str) -> RulesDelta {
    use std::str::FromStr as _;
    let undecided = |why: String| RulesDelta::Undecided { why };
    let cvc5 = match cvc5() {
        Ok(p) => p,
        Err(why) => return undecided(why),
    };
    let (old, new) = match (
        cedar_policy::PolicySet::from_str(old),
        cedar_policy::PolicySet::from_str(new),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return undecided(e.to_string()),
    };
    let schema = crate::authz::schema();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return undecided(format!("cannot start the solver's runtime: {e}")),
    };
    runtime
        .block_on(async move {
            use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicySet, solver::LocalSolver};
            let solver = LocalSolver::from_command(tokio::process::Command::new(&cvc5).args([
                "--lang",
                "smt",
                "--tlimit=60000",
            ]))
            .map_err(|e| format!("cannot start {}: {e}", cvc5.display()))?;
            let mut symcc = CedarSymCompiler::new(solver).map_err(|e| e.to_string())?;
            let mut changes = Vec::new();
            for env in schema.request_envs() {
                let action = env.action().id().unescaped().to_owned();
                let compiled = |set: &cedar_policy::PolicySet| {
                    CompiledPolicySet::compile(set, &env, &schema)
                        .map_err(|e| format!("action `{action}`: {e}"))
                };
                let (a, b) = (compiled(&old)?, compiled(&new)?);
                // Everything the new allows, the old allowed?
                let more = symcc
                    .check_implies_with_counterexample_opt(&b, &a)
                    .await
                    .map_err(|e| format!("action `{action}`: {e}"))?;
                if let Some(cex) = more {
                    changes.push(RuleChange {
                        action: action.clone(),
                        newly_allowed: true,
                        example: describe(&cex),
                    });
                }
                let fewer = symcc
                    .check_implies_with_counterexample_opt(&a, &b)
                    .await
                    .map_err(|e| format!("action `{action}`: {e}"))?;
                if let Some(cex) = fewer {
                    changes.push(RuleChange {
                        action,
                        newly_allowed: false,
                        example: describe(&cex),
                    });
                }
            }
            changes
                .sort_by(|a, b| (&a.action, !a.newly_allowed).cmp(&(&b.action, !b.newly_allowed)));
            Ok::<_, String>(RulesDelta::Decided { changes })
        })
        .unwrap_or_else(undecided)
}

/// A counterexample as one line: the resource and principal with their attributes, and the
/// context (the solver's names for entities are arbitrary, often empty).
#[cfg(feature = "symcc")]
fn describe(cex: &cedar_policy_symcc::Env) -> String {
    let attrs = |uid: Option<&cedar_policy::EntityUid>| {
        let uid = uid?;
        let json = cex.entities.get(uid)?.to_json_value().ok()?;
        Some(format!("{} {}", uid.type_name(), json["attrs"]))
    };
    let full = cex.to_string();
    let context = full
        .split_once("context:")
        .and_then(|(_, r)| r.split("entities:").next())
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!(
        "{} by {}, context {context}",
        attrs(cex.request.resource()).unwrap_or_else(|| "a resource".into()),
        attrs(cex.request.principal()).unwrap_or_else(|| "a component".into()),
    )
}
