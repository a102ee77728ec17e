//! The gate: the one route from an enforcement point to a decision.
//!
//! Every adapter that lets a guest reach something (files, sockets, DNS, outbound HTTP, calls
//! between components) holds a [`Gate`] for its component and asks it. The gate decides with
//! the policy's [`Authority`](crate::authz::Authority), records the decision (audit log
//! first, which may turn it into a deny when the log cannot be written fail-closed, then the
//! host's observer) and only then returns it, so no route can enforce a decision that was
//! not recorded. Decisions the authority has not cached are evaluated on a thread with a
//! real stack: host calls run on wasmtime's fiber stacks, where Cedar's stack guard cannot
//! measure the stack and would refuse to evaluate.
//!
//! This module never lets a request through by itself: a failure while deciding is a deny.

use std::sync::{Arc, OnceLock};

use crate::audit::Auditor;
use crate::authz::{Action, Decision, Request};
use crate::verified::VerifiedPolicy;

/// One decision made while a guest ran, as observers see it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DecisionEvent {
    /// The component that asked.
    pub component: String,
    /// The action.
    pub action: Action,
    /// The resource, as one line.
    pub resource: String,
    /// The whole request.
    pub request: Request,
    /// The decision, as enforced; or, when `enforced` is false, what report-only rules would
    /// have decided (nothing was enforced by it).
    pub decision: Decision,
    /// `false` for a report-only rule's would-be decision (see [`Decision::report`]).
    pub enforced: bool,
    /// For a request no grant matched, a grant that nearly did and what it lacks (see
    /// [`near_miss`](crate::authz::near_miss)).
    pub hint: Option<String>,
}

/// Receives decisions made on behalf of running guests.
pub(crate) type DecisionObserver = Arc<dyn Fn(&DecisionEvent) + Send + Sync>;

/// Where decisions go before they are enforced: the audit log (which, fail-closed, may turn
/// a decision into a deny), then the host's observer.
#[derive(Clone, Default)]
pub(crate) struct Recorder {
    pub(crate) audit: Option<Arc<Auditor>>,
    pub(crate) observer: Option<DecisionObserver>,
    /// The observer wants denials only.
    pub(crate) denials_only: bool,
}

impl Recorder {
    /// Whether recording `decision` would do anything at all.
    fn quiet(&self, decision: &Decision) -> bool {
        let observed = self.observer.is_some() && !(self.denials_only && decision.allowed);
        let written = self.audit.as_ref().is_some_and(|a| a.keeps(decision));
        !observed && !written && decision.report.as_deref().is_none_or(|r| self.quiet(r))
    }
}

/// Values a record carries only as salted hashes, made only when a record will be written.
pub(crate) type Sensitive = Vec<(&'static str, Vec<u8>)>;

/// Decides and records the requests of one component of one verified policy.
#[derive(Clone)]
pub(crate) struct Gate {
    policy: Arc<VerifiedPolicy>,
    component: Arc<str>,
    recorder: Recorder,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// The gate of `component` under `policy`, recording into `recorder`.
    pub(crate) fn new(policy: Arc<VerifiedPolicy>, component: &str, recorder: Recorder) -> Self {
        Self {
            policy,
            component: component.into(),
            recorder,
        }
    }

    /// The component this gate decides for.
    pub(crate) fn component(&self) -> &str {
        &self.component
    }

    /// For a default deny, the grant that nearly allowed `request` and what it lacks.
    pub(crate) fn hint(&self, decision: &Decision, request: &Request) -> Option<String> {
        let default_deny =
            !decision.allowed && decision.reasons.is_empty() && decision.errors.is_empty();
        let spec = self.policy.policy().components.get(&*self.component)?;
        default_deny
            .then(|| crate::authz::near_miss(spec, request))
            .flatten()
    }

    /// The verified policy this gate decides under.
    pub(crate) fn policy(&self) -> &Arc<VerifiedPolicy> {
        &self.policy
    }

    /// Decides `request`, records it, and returns the decision to enforce. For async host
    /// calls: a decision not cached is evaluated on the blocking pool.
    pub(crate) async fn decide(&self, request: &Request) -> Decision {
        self.decide_with(request, Vec::new).await
    }

    /// [`Gate::decide`] for a request with sensitive values; `sensitive` is called only when
    /// the audit log keeps the record.
    pub(crate) async fn decide_with(
        &self,
        request: &Request,
        sensitive: impl FnOnce() -> Sensitive,
    ) -> Decision {
        let decision = self.evaluate(request).await;
        self.record(request, decision, sensitive)
    }

    /// Decides `request` and records it, for synchronous host calls: a decision not cached is
    /// evaluated on a short-lived thread with a real stack, and the caller waits for it.
    pub(crate) fn decide_blocking(&self, request: &Request) -> Decision {
        let authority = self.policy.authority();
        let decision = match authority.cached(&self.component, request) {
            Some(d) => d,
            None => std::thread::scope(|s| {
                match std::thread::Builder::new()
                    .name("capgate-decide".into())
                    .spawn_scoped(s, || authority.decide(&self.component, request))
                {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| failed("the decision thread panicked".into())),
                    Err(e) => failed(e.to_string()),
                }
            }),
        };
        self.record(request, decision, Vec::new)
    }

    /// For a request that never changes (a call site's): decides it once and keeps the
    /// decision in `kept`. A kept allow that nothing records is enforced without a copy;
    /// anything else is recorded on every call, as [`Gate::decide_with`] records it. Returns
    /// the deny, if it is one.
    pub(crate) async fn decide_kept(
        &self,
        kept: &OnceLock<Decision>,
        request: &Request,
        sensitive: impl FnOnce() -> Sensitive,
    ) -> Result<(), Decision> {
        let decision = match kept.get() {
            Some(d) if d.allowed && self.recorder.quiet(d) => return Ok(()),
            Some(d) => d.clone(),
            None => {
                let d = self.evaluate(request).await;
                // A decision that could not be made completely is not kept.
                if d.errors.is_empty() {
                    let _ = kept.set(d.clone());
                }
                d
            }
        };
        let decision = self.record(request, decision, sensitive);
        if decision.allowed {
            Ok(())
        } else {
            Err(decision)
        }
    }

    /// Records a deny the enforcement point reached itself (a request too malformed to
    /// decide, an address the SSRF guard refused after the grants allowed the request, a path
    /// that changed while it was decided), and returns it.
    pub(crate) fn refuse(
        &self,
        request: &Request,
        why: &str,
        sensitive: impl FnOnce() -> Sensitive,
    ) -> Decision {
        self.record(request, Decision::failure(why), sensitive)
    }

    async fn evaluate(&self, request: &Request) -> Decision {
        let authority = self.policy.authority();
        if let Some(d) = authority.cached(&self.component, request) {
            return d;
        }
        let (policy, component, request) =
            (self.policy.clone(), self.component.clone(), request.clone());
        match tokio::task::spawn_blocking(move || policy.authority().decide(&component, &request))
            .await
        {
            Ok(d) => d,
            Err(e) => failed(e.to_string()),
        }
    }

    fn record(
        &self,
        request: &Request,
        decision: Decision,
        sensitive: impl FnOnce() -> Sensitive,
    ) -> Decision {
        let recorder = &self.recorder;
        let decision = match &recorder.audit {
            Some(a)
                if a.keeps(&decision) || decision.report.as_deref().is_some_and(|r| a.keeps(r)) =>
            {
                a.admit(
                    &self.policy,
                    &self.component,
                    request,
                    decision,
                    sensitive(),
                )
            }
            _ => decision,
        };
        if let Some(observer) = &recorder.observer {
            let report = decision.report.as_deref().map(|r| (r, false));
            for (d, enforced) in std::iter::once((&decision, true)).chain(report) {
                if recorder.denials_only && d.allowed {
                    continue;
                }
                observer(&DecisionEvent {
                    component: self.component.to_string(),
                    action: request.action(),
                    resource: request.resource(),
                    request: request.clone(),
                    hint: self.hint(d, request),
                    decision: d.clone(),
                    enforced,
                });
            }
        }
        decision
    }
}

fn failed(why: String) -> Decision {
    Decision::failure(format!("the decision could not be made: {why}"))
}
