//! Embedding capgate: a host application that verifies a signed policy, runs one of its
//! components, and collects the denials. The host applies the policy's `audit` section itself
//! (its log, level, durability and failure mode), exactly as `capgate run` does.
//!
//! ```text
//! cargo run --example embed -- POLICY.yaml TRUST.yaml STATE_DIR COMPONENT [ARGS...]
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex};

use capgate::signing::{StateStore, TrustRoot};
use capgate::{Host, HostConfig, VerifiedPolicy};

/// What a run produced: the guest's exit status and each denial, one line per decision.
pub struct Outcome {
    pub exit: i32,
    pub denials: Vec<String>,
}

/// Verifies `policy` against `trust` (remembering accepted versions in `state`), then runs
/// `component` with `args`.
pub async fn run(
    policy: &Path,
    trust: &Path,
    state: &Path,
    component: &str,
    args: &[String],
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let trust = TrustRoot::load(trust)?;
    let policy = Arc::new(VerifiedPolicy::load(
        policy,
        &trust,
        &StateStore::at(state),
    )?);

    let denials = Arc::new(Mutex::new(Vec::new()));
    let sink = denials.clone();
    // The audit log's anchor lives beside the rollback state, as `capgate run` keeps it: the
    // host then refuses to continue a log that was cut off or extended behind its back.
    let config = HostConfig::new().audit_state_dir(state);
    let host = Host::new(config.observe(move |event| {
        if !event.decision.allowed {
            let line = format!(
                "{} {} {}: {}",
                event.component,
                event.action,
                event.resource,
                event.decision.explain()
            );
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    }))?;

    let exit = host.run(&policy, component, args).await;
    // Seal the audit log (its final checkpoint) whether or not the run succeeded.
    host.close()?;
    let exit = exit?;
    let denials = std::mem::take(&mut *denials.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Outcome { exit, denials })
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let [policy, trust, state, component, rest @ ..] = argv.as_slice() else {
        eprintln!("usage: embed POLICY.yaml TRUST.yaml STATE_DIR COMPONENT [ARGS...]");
        return std::process::ExitCode::from(64);
    };
    match run(
        Path::new(policy),
        Path::new(trust),
        Path::new(state),
        component,
        rest,
    )
    .await
    {
        Ok(outcome) => {
            for d in &outcome.denials {
                eprintln!("denied: {d}");
            }
            std::process::ExitCode::from(u8::try_from(outcome.exit).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
