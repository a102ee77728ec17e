//! Compiling a policy to Cedar: one `permit` per grant, the rules files, strict validation
//! against the schema, and the per-component slices.
//!
//! Everything here runs once, when a policy loads. Errors point into the rules file that
//! caused them (file, line, column); the generated grant policies are correct by construction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use cedar_policy::{
    Entity, EntityId, EntityTypeName, EntityUid, Policy as CedarPolicy, PolicyId, PolicySet,
    PrincipalConstraint, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic as _;

use crate::policy::{Access, ComponentPolicy, Policy, PolicyError};

/// The Cedar schema (`policies/capgate.cedarschema`) every rule is validated against.
pub const SCHEMA: &str = include_str!("../../policies/capgate.cedarschema");

/// What a `Component` entity says about a component: its artifact digest and signers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Lowercase hex SHA-256 of the artifact (empty when not known yet).
    pub sha256: String,
    /// Trust-root names of the keys that signed the artifact.
    pub signers: Vec<String>,
}

/// The `Component` entity of `name` with `id`'s attributes. Built on a component's first
/// uncached decision: Cedar sets up its extensions the first time it evaluates an attribute.
#[allow(clippy::expect_used)]
pub(super) fn principal(name: &str, id: &Identity) -> Entity {
    let attrs = HashMap::from([
        (
            "name".to_owned(),
            RestrictedExpression::new_string(name.to_owned()),
        ),
        (
            "sha256".to_owned(),
            RestrictedExpression::new_string(id.sha256.clone()),
        ),
        (
            "signers".to_owned(),
            RestrictedExpression::new_set(
                id.signers
                    .iter()
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            ),
        ),
    ]);
    // INVARIANT: string and set-of-string attributes always evaluate.
    Entity::new(component_uid(name), attrs, HashSet::new()).expect("principal attributes evaluate")
}

/// A legal but suspicious construct in the rules, reported by `capgate policy check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lint {
    /// The rules file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// What looks wrong.
    pub message: String,
}

impl std::fmt::Display for Lint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// One component's compiled policies.
pub(super) struct Slice {
    /// Its grants' permits and the enforced rules that apply to it: what Cedar would decide
    /// over.
    pub all: PolicySet,
    /// `all` and the report-only rules that apply to it.
    pub all_with_report: PolicySet,
    /// The enforced rules alone.
    pub rules: PolicySet,
    /// The enforced and the report-only rules.
    pub rules_with_report: PolicySet,
    /// Whether any report-only rule applies to it.
    pub reports: bool,
    pub identity: Identity,
}

pub(super) struct Compiled {
    pub slices: BTreeMap<String, Slice>,
    pub lints: Vec<Lint>,
    /// Ids of the report-only rules, sorted.
    pub report: Vec<String>,
}

/// Where a rule came from, to locate errors, and how it applies.
struct RuleOrigin {
    path: PathBuf,
    text: String,
    offset: usize,
    /// Marked `@mode("report")`: evaluated and recorded, never enforced.
    report: bool,
}

/// Whether a rule is report-only: `@mode("report")`. `@mode("enforce")`, or no `@mode`, is
/// enforced; any other value is an error (a misspelt mode must not silently enforce, nor
/// silently not).
fn report_only(p: &CedarPolicy) -> Result<bool, String> {
    // Annotation keys are case-sensitive: `@Mode("report")` would silently enforce.
    if let Some((k, _)) = p
        .annotations()
        .find(|(k, _)| *k != "mode" && k.to_ascii_lowercase().trim_matches('_') == "mode")
    {
        return Err(format!(
            "`@{k}` is not `@mode` (annotation keys are case-sensitive)"
        ));
    }
    match p.annotation("mode") {
        None | Some("enforce") => Ok(false),
        Some("report") => Ok(true),
        Some(other) => Err(format!(
            "`@mode(\"{other}\")` is not a mode: expected `report` or `enforce`"
        )),
    }
}

fn line_col(text: &str, offset: usize) -> (u64, u64) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() as u64 + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
    (line, column)
}

fn invalid(
    path: &Path,
    text: &str,
    offset: usize,
    message: String,
    hint: Option<String>,
) -> PolicyError {
    let (line, column) = line_col(text, offset);
    PolicyError::Invalid {
        path: path.to_owned(),
        line,
        column,
        message,
        hint,
    }
}

#[allow(clippy::expect_used)]
pub(crate) fn schema() -> Schema {
    // INVARIANT: SCHEMA is a constant that a unit test parses; it cannot fail at run time.
    Schema::from_cedarschema_str(SCHEMA)
        .expect("capgate.cedarschema parses")
        .0
}

fn component_uid(name: &str) -> EntityUid {
    static COMPONENT: std::sync::OnceLock<EntityTypeName> = std::sync::OnceLock::new();
    // INVARIANT: `Component` is a valid type name; any string is a valid entity id.
    #[allow(clippy::expect_used)]
    let ty =
        COMPONENT.get_or_init(|| EntityTypeName::from_str("Component").expect("valid type name"));
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(name))
}

/// The action clause of each kind of grant: read-only files, read-write files, connect, bind,
/// UDP, lookup, HTTP, call. Every policy generated from a grant uses one of these, and a test
/// validates each against the schema (so policies without rules skip validation at load).
const CLAUSES: [&str; 8] = [
    r#"action == Action::"fs.read""#,
    r#"action in [Action::"fs.read", Action::"fs.write"]"#,
    r#"action == Action::"net.connect""#,
    r#"action == Action::"net.bind""#,
    r#"action == Action::"net.udp""#,
    r#"action == Action::"net.lookup""#,
    r#"action == Action::"http.request""#,
    r#"action == Action::"call""#,
];

/// The Cedar policies a component's grants compile to, as (id, action clause).
fn grant_clauses(c: &ComponentPolicy) -> Vec<(String, &'static str)> {
    let [read, read_write, connect, bind, udp, lookup, http, call] = CLAUSES;
    let mut out = Vec::new();
    for f in &c.files {
        let action = match f.access {
            Access::ReadOnly => read,
            Access::ReadWrite => read_write,
        };
        out.push((f.id.to_string(), action));
    }
    let kinds = [
        (&c.network.connect, connect),
        (&c.network.bind, bind),
        (&c.network.udp, udp),
    ];
    for (grants, action) in kinds {
        out.extend(grants.iter().map(|g| (g.id.to_string(), action)));
    }
    out.extend(c.network.lookup.iter().map(|g| (g.id.to_string(), lookup)));
    out.extend(c.http.iter().map(|g| (g.id.to_string(), http)));
    out.extend(c.calls.iter().map(|g| (g.id.to_string(), call)));
    out
}

#[allow(clippy::expect_used)]
fn grant_policy(component: &str, id: &str, action: &str) -> CedarPolicy {
    // Component names and grant ids contain only [a-z0-9-.[\]], so no escaping is needed.
    let text = format!(
        "@id(\"{id}\")\npermit(principal == Component::\"{component}\", {action}, resource)\nwhen {{ context.grants.contains(\"{id}\") }};"
    );
    // INVARIANT: the text is generated from validated names in a fixed shape a test parses.
    CedarPolicy::parse(Some(PolicyId::new(id)), text).expect("generated grant policy parses")
}

pub(super) fn compile(
    policy: &Policy,
    identity: impl Fn(&str) -> Identity,
) -> Result<Compiled, PolicyError> {
    let (mut all, grants) = grant_policies(policy);
    let (rules, origins) = parse_rules(policy, &mut all)?;
    validate_rules(policy, &all, &rules, &origins)?;
    let report: HashSet<&str> = origins
        .iter()
        .filter(|(_, o)| o.report)
        .map(|(id, _)| id.as_str())
        .collect();
    let slices = grants
        .into_iter()
        .map(|(name, own)| {
            let slice = slice(&name, own, &rules, &report, identity(&name));
            (name, slice)
        })
        .collect();
    let mut report: Vec<String> = report.into_iter().map(str::to_owned).collect();
    report.sort();
    Ok(Compiled {
        slices,
        lints: lint_rules(policy, &rules, &origins),
        report,
    })
}

/// How deep `(`, `[` and `{` may nest in a rules file. Cedar's parser recurses once per level
/// or more; this bound keeps it far from the end of [`PARSER_STACK`].
const MAX_NESTING: usize = 64;

/// The stack Cedar parses rules on: known to suffice for [`MAX_NESTING`], whatever stack the
/// embedder's thread has.
const PARSER_STACK: usize = 16 << 20;

/// Where `text` first nests deeper than [`MAX_NESTING`], outside strings and comments.
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped, mut comment) = (0usize, false, false, false);
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if comment {
            comment = b != b'\n';
        } else if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'/' if bytes.get(i + 1) == Some(&b'/') => comment = true,
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Some(i);
                    }
                }
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    None
}

/// Runs `parse` on a thread with a stack of [`PARSER_STACK`] bytes; if no thread can be
/// started, on this one (the nesting bound still holds).
fn on_parser_stack<T: Send>(parse: impl FnOnce() -> T + Send) -> T {
    let parse = std::sync::Mutex::new(Some(parse));
    std::thread::scope(|s| {
        let spawned = std::thread::Builder::new()
            .name("capgate-parse".into())
            .stack_size(PARSER_STACK)
            .spawn_scoped(s, || {
                let f = parse.lock().unwrap_or_else(|e| e.into_inner()).take();
                f.map(|f| f())
            });
        match spawned.ok().and_then(|h| h.join().ok()).flatten() {
            Some(result) => result,
            None => {
                let f = parse.lock().unwrap_or_else(|e| e.into_inner()).take();
                match f {
                    Some(f) => f(),
                    // INVARIANT: the parse ran on the thread, which then panicked: the
                    // panic is resumed here.
                    None => std::panic::resume_unwind(Box::new("the rules parser panicked")),
                }
            }
        }
    })
}

/// Each component's grants as Cedar `permit`s, by component, and all of them in one set.
fn grant_policies(policy: &Policy) -> (PolicySet, BTreeMap<String, Vec<CedarPolicy>>) {
    let mut all = PolicySet::new();
    let mut grants = BTreeMap::new();
    for (name, c) in &policy.components {
        let ps = grant_clauses(c)
            .into_iter()
            .map(|(id, action)| grant_policy(name, &id, action))
            .collect::<Vec<_>>();
        for p in &ps {
            // Grant ids are unique (component name + list + index), so adding cannot fail.
            let _ = all.add(p.clone());
        }
        grants.insert(name.clone(), ps);
    }
    (all, grants)
}

/// The rules files' policies, each renamed to its `@id` and added to `all`, with where each
/// was written. A rule without an `@id`, a reused id or a template is an error naming its
/// file, line and column.
fn parse_rules(
    policy: &Policy,
    all: &mut PolicySet,
) -> Result<(Vec<CedarPolicy>, HashMap<String, RuleOrigin>), PolicyError> {
    let mut rules: Vec<CedarPolicy> = Vec::new();
    let mut origins: HashMap<String, RuleOrigin> = HashMap::new();
    for src in &policy.rules {
        if let Some(offset) = too_deep(&src.text) {
            return Err(invalid(
                &src.path,
                &src.text,
                offset,
                format!("the rules nest deeper than {MAX_NESTING} levels of `(`, `[` and `{{`"),
                Some("split the condition into several rules, or several `when` clauses".into()),
            ));
        }
        let parsed = on_parser_stack(|| PolicySet::from_str(&src.text).map_err(Box::new)).map_err(
            |errs| {
                let first = errs.iter().next();
                let offset = first
                    .and_then(|e| e.labels())
                    .and_then(|mut l| l.next())
                    .map_or(0, |l| l.offset());
                let message = first.map_or_else(|| errs.to_string(), |e| e.to_string());
                // Cedar says where the input ended; what usually ends it early is a rule
                // without its closing `;`.
                let hint = message
                    .contains("unexpected end of input")
                    .then(|| "every rule ends with `;`: is one missing?".to_owned());
                invalid(
                    &src.path,
                    &src.text,
                    offset,
                    format!("not valid Cedar: {message}"),
                    hint,
                )
            },
        )?;
        if let Some(t) = parsed.templates().next() {
            let offset = src.text.find(&t.to_cedar()).unwrap_or(0);
            return Err(invalid(
                &src.path,
                &src.text,
                offset,
                "templates (policies with `?principal` or `?resource`) are not supported in rules"
                    .into(),
                None,
            ));
        }
        let mut search_from = 0;
        for p in parsed.policies() {
            let offset = p
                .to_cedar()
                .and_then(|txt| src.text[search_from..].find(&txt).map(|i| i + search_from))
                .unwrap_or(search_from);
            search_from = offset + src.text[offset..].chars().next().map_or(1, char::len_utf8);
            let Some(id) = p.annotation("id").filter(|id| !id.is_empty()) else {
                return Err(invalid(
                    &src.path,
                    &src.text,
                    offset,
                    "this rule has no `@id`".into(),
                    Some("add `@id(\"a-name\")` before `permit` or `forbid`, so decisions can name it".into()),
                ));
            };
            let report = report_only(p).map_err(|message| {
                invalid(
                    &src.path,
                    &src.text,
                    offset,
                    message,
                    Some(
                        "`@mode(\"report\")` records what a rule would decide without enforcing it"
                            .into(),
                    ),
                )
            })?;
            let renamed = p.new_id(PolicyId::new(id));
            if all.policy(renamed.id()).is_some() {
                let other = match origins.get(id) {
                    Some(o) => format!(
                        "the rule at {}:{}",
                        o.path.display(),
                        line_col(&o.text, o.offset).0
                    ),
                    None => "a grant of the policy".into(),
                };
                return Err(invalid(
                    &src.path,
                    &src.text,
                    offset,
                    format!("rule id `{id}` is already used by {other}"),
                    Some("give every rule its own `@id`".into()),
                ));
            }
            all.add(renamed.clone())
                .map_err(|e| invalid(&src.path, &src.text, offset, e.to_string(), None))?;
            origins.insert(
                id.to_owned(),
                RuleOrigin {
                    path: src.path.clone(),
                    text: src.text.clone(),
                    offset,
                    report,
                },
            );
            rules.push(renamed);
        }
    }

    Ok((rules, origins))
}

/// Grant policies are generated in shapes the tests validate against the schema, so only
/// rules need validating here; a policy without rules never parses the schema.
fn validate_rules(
    policy: &Policy,
    all: &PolicySet,
    rules: &[CedarPolicy],
    origins: &HashMap<String, RuleOrigin>,
) -> Result<(), PolicyError> {
    if rules.is_empty() {
        return Ok(());
    }
    let result = on_parser_stack(|| Validator::new(schema()).validate(all, ValidationMode::Strict));
    if let Some(e) = result.validation_errors().next() {
        let id = AsRef::<str>::as_ref(e.policy_id()).to_owned();
        let (path, text, base) = match origins.get(&id) {
            Some(o) => (o.path.clone(), o.text.as_str(), o.offset),
            None => (policy.path.clone(), "", 0),
        };
        let within = e
            .labels()
            .and_then(|mut l| l.next())
            .map_or(0, |l| l.offset());
        return Err(invalid(
            &path,
            text,
            base + within,
            format!("rule does not type-check against the schema: {e}"),
            Some(
                "`capgate policy schema` prints the entities, actions and context of each action"
                    .into(),
            ),
        ));
    }

    Ok(())
}

/// One component's slice: its grants, and the rules whose principal could be it, enforced or
/// (ids in `report`) report-only.
fn slice(
    name: &str,
    own: Vec<CedarPolicy>,
    rules: &[CedarPolicy],
    report: &HashSet<&str>,
    identity: Identity,
) -> Slice {
    let mut set = PolicySet::new();
    let mut own_rules = PolicySet::new();
    // Ids were checked unique across every grant and rule, so adding cannot fail.
    for p in own {
        let _ = set.add(p);
    }
    let (mut set_with_report, mut rules_with_report) = (set.clone(), PolicySet::new());
    let mut reports = false;
    let me = component_uid(name);
    for r in rules {
        let applies = match r.principal_constraint() {
            PrincipalConstraint::Eq(uid) => uid == me,
            _ => true,
        };
        if applies {
            let _ = set_with_report.add(r.clone());
            let _ = rules_with_report.add(r.clone());
            if report.contains(AsRef::<str>::as_ref(r.id())) {
                reports = true;
            } else {
                let _ = set.add(r.clone());
                let _ = own_rules.add(r.clone());
            }
        }
    }
    Slice {
        all: set,
        all_with_report: set_with_report,
        rules: own_rules,
        rules_with_report,
        reports,
        identity,
    }
}

/// Rules that are legal but probably mistakes: a rule naming a component the policy lacks.
fn lint_rules(
    policy: &Policy,
    rules: &[CedarPolicy],
    origins: &HashMap<String, RuleOrigin>,
) -> Vec<Lint> {
    let mut lints = Vec::new();
    let names: BTreeSet<&str> = policy.components.keys().map(String::as_str).collect();
    for r in rules {
        if let PrincipalConstraint::Eq(uid) = r.principal_constraint()
            && uid.type_name().to_string() == "Component"
            && !names.contains(uid.id().unescaped())
        {
            let o = &origins[AsRef::<str>::as_ref(r.id())];
            let (line, column) = line_col(&o.text, o.offset);
            lints.push(Lint {
                path: o.path.clone(),
                line,
                column,
                message: format!(
                    "rule `{}` names component `{}`, which this policy does not define",
                    AsRef::<str>::as_ref(r.id()),
                    uid.id().unescaped()
                ),
            });
        }
    }
    lints
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_parses_and_every_kind_of_grant_policy_validates() {
        let mut set = PolicySet::new();
        for (i, clause) in CLAUSES.iter().enumerate() {
            set.add(grant_policy("app", &format!("app.grant[{i}]"), clause))
                .unwrap();
        }
        let r = Validator::new(schema()).validate(&set, ValidationMode::Strict);
        assert!(r.validation_passed(), "{r}");
        assert_eq!(set.policies().count(), CLAUSES.len());
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("x", 0), (1, 1));
    }
}
