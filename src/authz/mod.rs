//! Authorisation: the one decision function every enforcement point calls.
//!
//! Grants are matched by capgate's own pattern matchers (exact semantics, property-tested);
//! Cedar then combines the matching grants with the policy's rules: each grant is a `permit`
//! whose id names it, rules may `permit` or `forbid` on any attribute of the request, and
//! `forbid` wins. Each component gets its own slice of the policy set (its grants plus the
//! rules that can apply to it), so a decision's cost does not grow with the number of
//! components. Decisions are cached: the context of a request is derived entirely from its
//! resource, so an identical request always gets the identical decision. The cache is keyed by the
//! whole request, field by field.
//!
//! This module never returns an error from a decision: anything that goes wrong while deciding
//! (a request Cedar rejects, a policy that fails to evaluate) is a deny with the reason.

mod compile;
mod request;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use cedar_policy::{Authorizer, Entities, Entity, PolicySet};

#[cfg(feature = "symcc")]
pub(crate) use compile::schema;
pub use compile::{Identity, Lint, SCHEMA};
#[cfg(feature = "runtime")]
pub(crate) use request::normalise;
pub use request::{Action, Request, near_miss};

use crate::policy::{ComponentPolicy, Policy, PolicyError};

/// Allow or deny, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Ids of the grants and rules that decided: the permits that allowed it, or the forbids
    /// that denied it. Empty for a default deny (no grant matched).
    pub reasons: Vec<String>,
    /// Problems met while deciding; any problem makes the decision a deny.
    pub errors: Vec<String>,
    /// What the decision would be if the policy's report-only rules (`@mode("report")`) were
    /// enforced too, when that differs from this one. It is recorded (`"enforced": false` in
    /// the audit log), never enforced.
    pub report: Option<Box<Decision>>,
}

impl Decision {
    /// A deny because deciding failed: no grant or rule decided, `message` says what went
    /// wrong.
    pub fn failure(message: impl Into<String>) -> Self {
        Self {
            allowed: false,
            reasons: Vec::new(),
            errors: vec![message.into()],
            report: None,
        }
    }

    /// Why, without the verdict: `no grant matches`, `forbidden by `r``, the problems met, or
    /// `allowed by `g``. For a line that already says "denied".
    pub fn reason(&self) -> String {
        match (
            self.allowed,
            self.reasons.is_empty(),
            self.errors.is_empty(),
        ) {
            (true, _, _) => format!("allowed by {}", quote_all(&self.reasons)),
            (false, _, false) => self.errors.join("; "),
            (false, true, true) => "no grant matches".to_owned(),
            (false, false, true) => format!("forbidden by {}", quote_all(&self.reasons)),
        }
    }

    /// A short human explanation: which grant or rule decided, or that none matched.
    pub fn explain(&self) -> String {
        if self.allowed {
            self.reason()
        } else if self.reasons.is_empty() || !self.errors.is_empty() {
            format!("denied: {}", self.reason())
        } else {
            format!("denied by {}", quote_all(&self.reasons))
        }
    }
}

/// `enforced`, with `would` (the decision with report-only rules enforced too) as its report
/// when the two differ.
fn with_report(mut enforced: Decision, would: Decision) -> Decision {
    if would.allowed != enforced.allowed {
        enforced.report = Some(Box::new(would));
    }
    enforced
}

fn quote_all(ids: &[String]) -> String {
    ids.iter()
        .map(|r| format!("`{r}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides requests for one component.
struct Slice {
    component: ComponentPolicy,
    /// Its grants' permits and its enforced rules: the whole policy Cedar would decide over.
    policies: PolicySet,
    /// `policies` and its report-only rules.
    policies_with_report: PolicySet,
    /// The enforced rules alone, which Cedar evaluates; grants are matched natively.
    rules: PolicySet,
    /// The enforced and the report-only rules.
    rules_with_report: PolicySet,
    /// Whether any report-only rule applies to it.
    reports: bool,
    identity: compile::Identity,
    /// The `Component` entity, made on the first uncached decision.
    principal: std::sync::OnceLock<Entity>,
    cache: Mutex<HashMap<Request, Decision>>,
}

/// Cache entries kept per component before the cache is cleared and refilled.
const CACHE_LIMIT: usize = 4096;

/// The compiled authorisation of a whole policy.
#[derive(Clone)]
pub struct Authority {
    slices: Arc<BTreeMap<String, Slice>>,
    lints: Arc<Vec<Lint>>,
    report: Arc<Vec<String>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("components", &self.slices.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Authority {
    /// Compiles `policy`'s grants and rules. `identity` gives each component's artifact digest
    /// and signers (the `Component` entity's attributes). Rules that do not parse, lack an
    /// `@id`, reuse an id or do not validate against the schema are errors naming file, line
    /// and column.
    pub fn compile(
        policy: &Policy,
        identity: impl Fn(&str) -> Identity,
    ) -> Result<Self, PolicyError> {
        let compiled = compile::compile(policy, identity)?;
        let slices = compiled
            .slices
            .into_iter()
            .map(|(name, compiled)| {
                let component = policy.components[&name].clone();
                (
                    name,
                    Slice {
                        component,
                        policies: compiled.all,
                        policies_with_report: compiled.all_with_report,
                        rules: compiled.rules,
                        rules_with_report: compiled.rules_with_report,
                        reports: compiled.reports,
                        identity: compiled.identity,
                        principal: std::sync::OnceLock::new(),
                        cache: Mutex::new(HashMap::new()),
                    },
                )
            })
            .collect();
        Ok(Self {
            slices: Arc::new(slices),
            lints: Arc::new(compiled.lints),
            report: Arc::new(compiled.report),
        })
    }

    /// Things in the rules that are legal but probably mistakes.
    pub fn lints(&self) -> &[Lint] {
        &self.lints
    }

    /// Ids of the report-only rules (`@mode("report")`): evaluated and recorded, never
    /// enforced.
    pub fn report_only(&self) -> &[String] {
        &self.report
    }

    /// Decides whether `component` may do `request`. Pure: it records nothing and enforces
    /// nothing. Running guests reach decisions only through the host's gate, which records
    /// each one before it is enforced; this is for what-if questions and tests.
    pub fn decide(&self, component: &str, request: &Request) -> Decision {
        let Some(slice) = self.slices.get(component) else {
            return Decision::failure(format!("no component `{component}` in this policy"));
        };
        // A poisoned lock only means another thread panicked mid-insert; the map is intact.
        if let Some(d) = slice
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(request)
        {
            return d.clone();
        }
        let decision = self.evaluate(slice, request);
        let mut cache = slice.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(request.clone(), decision.clone());
        decision
    }

    /// The cached decision for this request, if there is one. Never evaluates Cedar, so it is
    /// safe to call anywhere, including on a wasmtime fiber stack (where Cedar's stack guard
    /// cannot measure the stack and refuses to evaluate).
    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    pub(crate) fn cached(&self, component: &str, request: &Request) -> Option<Decision> {
        let slice = self.slices.get(component)?;
        slice
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(request)
            .cloned()
    }

    /// Decides without the cache (what `decide` does on a miss), and without filling it: for
    /// what-if questions (replaying a log under another policy) and for measuring.
    pub fn decide_uncached(&self, component: &str, request: &Request) -> Decision {
        match self.slices.get(component) {
            Some(slice) => self.evaluate(slice, request),
            None => Decision::failure(format!("no component `{component}` in this policy")),
        }
    }

    fn principal(&self, slice: &Slice) -> Entity {
        slice
            .principal
            .get_or_init(|| compile::principal(&slice.component.name, &slice.identity))
            .clone()
    }

    /// Decides `request`. A grant's permit holds exactly when the grant's pattern matches, so
    /// grants are matched here and only the rules go to Cedar; the two are combined as Cedar
    /// combines policies (any satisfied forbid denies; otherwise any satisfied permit allows;
    /// an evaluation error denies). The result is the decision Cedar reaches over the grants'
    /// permits and the rules together ([`Authority::decide_reference`]), which a property test
    /// checks, at a cost that does not grow with the number of grants.
    fn evaluate(&self, slice: &Slice, request: &Request) -> Decision {
        let grants = request.matching_grants(&slice.component);
        let enforced = self.combine(slice, request, grants.clone(), &slice.rules);
        if !slice.reports {
            return enforced;
        }
        let would = self.combine(slice, request, grants, &slice.rules_with_report);
        with_report(enforced, would)
    }

    /// The decision over the grants that match (`grants`) and `rules`.
    fn combine(
        &self,
        slice: &Slice,
        request: &Request,
        grants: Vec<String>,
        rules: &PolicySet,
    ) -> Decision {
        if rules.is_empty() {
            let mut reasons = grants;
            reasons.sort();
            return Decision {
                allowed: !reasons.is_empty(),
                reasons,
                errors: Vec::new(),
                report: None,
            };
        }
        let (decision, fired, errors) = match self.cedar(slice, request, &grants, rules) {
            Ok(r) => r,
            Err(failure) => return failure,
        };
        if decision == cedar_policy::Decision::Deny && !fired.is_empty() {
            // Forbids held: they are the reasons.
            return Decision {
                allowed: false,
                reasons: fired,
                errors,
                report: None,
            };
        }
        let mut reasons = grants;
        if decision == cedar_policy::Decision::Allow {
            reasons.extend(fired);
        }
        reasons.sort();
        reasons.dedup();
        Decision {
            allowed: errors.is_empty() && !reasons.is_empty(),
            reasons,
            errors,
            report: None,
        }
    }

    /// The reference decision: hands Cedar the grants' permits and the rules together, which
    /// is how [`Authority::decide`] is specified. `decide` matches grants natively and must
    /// always agree with this (a property test checks it); this one is slower with many
    /// grants. For checking and measuring, never needed to enforce.
    pub fn decide_reference(&self, component: &str, request: &Request) -> Decision {
        let Some(slice) = self.slices.get(component) else {
            return Decision::failure(format!("no component `{component}` in this policy"));
        };
        let grants = request.matching_grants(&slice.component);
        let over = |set: &PolicySet| match self.cedar(slice, request, &grants, set) {
            Ok((decision, reasons, errors)) => Decision {
                allowed: errors.is_empty() && decision == cedar_policy::Decision::Allow,
                // For an allow, the permits; for a deny, the forbids (Cedar reports only those).
                reasons,
                errors,
                report: None,
            },
            Err(failure) => failure,
        };
        let enforced = over(&slice.policies);
        if !slice.reports {
            return enforced;
        }
        with_report(enforced, over(&slice.policies_with_report))
    }

    /// Cedar's decision on `request` over `set`: the decision, the policies that determined
    /// it (sorted), and evaluation errors.
    fn cedar(
        &self,
        slice: &Slice,
        request: &Request,
        grants: &[String],
        set: &PolicySet,
    ) -> Result<(cedar_policy::Decision, Vec<String>, Vec<String>), Decision> {
        let failure = |e: String| Decision::failure(format!("request cannot be evaluated: {e}"));
        let built = request
            .to_cedar(&slice.component, grants)
            .map_err(failure)?;
        let entities = Entities::from_entities([self.principal(slice), built.resource], None)
            .map_err(|e| failure(e.to_string()))?;
        let response = Authorizer::new().is_authorized(&built.request, set, &entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        let mut fired: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| AsRef::<str>::as_ref(id).to_owned())
            .collect();
        fired.sort();
        Ok((response.decision(), fired, errors))
    }
}
