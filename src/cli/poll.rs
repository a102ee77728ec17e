//! `serve --poll`: reading the policy again, verifying each new version before `serve`
//! activates it, and recording what was refused.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capgate::audit::PolicyChange;
use capgate::signing::Sha256;
use capgate::{Host, VerifiedPolicy};

use super::run::{Source, load, policy_file};

/// The policy flags of `serve`, owned, for the polling task.
#[derive(Clone)]
pub(super) struct Polled {
    policy: PathBuf,
    trust: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    allow_unsigned: bool,
    /// `--audit FILE` was given (a policy's own `audit.log` is not used).
    audit_given: bool,
}

impl Polled {
    pub(super) fn of(src: &Source<'_>) -> Self {
        Self {
            policy: src.policy.to_owned(),
            trust: src.trust.map(ToOwned::to_owned),
            state_dir: src.state_dir.map(ToOwned::to_owned),
            allow_unsigned: src.allow_unsigned,
            audit_given: src.audit.is_some(),
        }
    }

    fn source(&self) -> Source<'_> {
        Source {
            policy: &self.policy,
            trust: self.trust.as_deref(),
            state_dir: self.state_dir.as_deref(),
            allow_unsigned: self.allow_unsigned,
            audit: None,
            audit_key: None,
            audit_otlp: None,
            audit_otlp_ca: None,
            policy_name: None,
        }
    }
}

/// What one look at the policy found.
enum Found {
    /// The same bytes as last time, or the same policy as the one served.
    Unchanged(Sha256),
    /// A new version, verified, accepted and able to serve.
    New(Arc<VerifiedPolicy>, Sha256),
    /// A new version that failed verification or cannot serve, and why.
    Refused(String, Sha256),
    /// The policy could not be read (a missing file, an unreachable registry): no version.
    Unreadable(String),
}

/// Every `every`, reads the policy of `src` again; sends each new verified version to
/// `versions`, and records each refused one in the log of the version serving.
pub(super) async fn watch(
    src: Polled,
    every: Duration,
    versions: tokio::sync::watch::Sender<Arc<VerifiedPolicy>>,
    host: Arc<Host>,
    component: String,
    source: String,
) {
    let mut seen: Option<Sha256> = None;
    let mut unreadable: Option<String> = None;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let current = versions.borrow().clone();
        let (src, host2, component2, current2) = (
            src.clone(),
            host.clone(),
            component.clone(),
            current.clone(),
        );
        let Ok(found) =
            tokio::task::spawn_blocking(move || look(&src, &host2, &component2, &current2, seen))
                .await
        else {
            continue;
        };
        match found {
            Found::Unchanged(fp) => seen = Some(fp),
            Found::New(policy, fp) => {
                seen = Some(fp);
                unreadable = None;
                versions.send_replace(policy);
            }
            Found::Refused(reason, fp) => {
                seen = Some(fp);
                unreadable = None;
                eprintln!(
                    "capgate: refused a new version of `{source}`: {reason}; policy `{}` version {} goes on serving",
                    current.policy().name,
                    current.policy().version
                );
                let _ = host.record_policy_event(
                    &current,
                    PolicyChange::Refused,
                    &source,
                    None,
                    Some(reason),
                );
            }
            Found::Unreadable(why) => {
                if unreadable.as_deref() != Some(why.as_str()) {
                    eprintln!(
                        "capgate: warning: cannot read `{source}` to poll it ({why}); version {} goes on serving",
                        current.policy().version
                    );
                    unreadable = Some(why);
                }
            }
        }
    }
}

/// Reads the policy once and decides what it is, compared with `current` and the bytes
/// `seen` last time.
fn look(
    src: &Polled,
    host: &Arc<Host>,
    component: &str,
    current: &Arc<VerifiedPolicy>,
    seen: Option<Sha256>,
) -> Found {
    let s = src.source();
    let file = match policy_file(&s, false) {
        Ok(f) => f,
        // A pull refused for trust (a digest mismatch, no signature) or as invalid (not a
        // bundle) is a version refused; anything else (no registry, no file) is no version.
        Err(e) if matches!(e.exit, super::Exit::NoPerm | super::Exit::DataErr) => {
            let fp = Sha256::of(e.to_string().as_bytes());
            if seen == Some(fp) {
                return Found::Unchanged(fp);
            }
            return Found::Refused(e.to_string(), fp);
        }
        Err(e) => return Found::Unreadable(e.to_string()),
    };
    let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_default();
    let mut bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) => return Found::Unreadable(format!("{}: {e}", file.display())),
    };
    bytes.extend(read(&capgate::signing::sig_path(&file)));
    let fp = Sha256::of(&bytes);
    if seen == Some(fp) {
        return Found::Unchanged(fp);
    }
    let local = Source {
        policy: &file,
        ..src.source()
    };
    // Verified without being accepted first: a version that cannot serve must not become
    // the highest this host accepts.
    let checked = match load(&local, false).and_then(|p| {
        super::run::outside(
            p,
            super::run::pulled_dir(file.clone()).as_deref(),
            src.audit_given,
        )
    }) {
        Ok(p) => Arc::new(p),
        Err(e) => return Found::Refused(e.to_string(), fp),
    };
    if checked.policy().sha256 == current.policy().sha256 {
        return Found::Unchanged(fp);
    }
    // Rollback protection is per name: a source that now holds another policy (another
    // service's, a development one signed by the same keys) is not a new version of this one.
    if checked.policy().name != current.policy().name {
        return Found::Refused(
            format!(
                "it is policy `{}`, not `{}`: a new version must keep the name (restart the host to serve another policy)",
                checked.policy().name,
                current.policy().name
            ),
            fp,
        );
    }
    if let Err(e) = capgate::servable(host, &checked, component) {
        return Found::Refused(format!("it cannot serve `{component}`: {e}"), fp);
    }
    // Only now is the version recorded as accepted (the same verified policy is activated:
    // what was checked is what serves).
    if !src.allow_unsigned {
        let accepted = super::run::state(src.state_dir.as_deref())
            .and_then(|state| checked.accept(&state).map_err(Into::into));
        if let Err(e) = accepted {
            return Found::Refused(e.to_string(), fp);
        }
    }
    Found::New(checked, fp)
}
