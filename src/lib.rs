//! capgate runs WebAssembly components under signed, capability-based policies.
//!
//! Data flows one way: verified bytes ([`signing`]) → parsed policy ([`policy`]) → compiled
//! authorisation ([`authz`]) → running components ([`Host`]) → decisions, each recorded in the
//! [`audit`] log before it is enforced. Signing and trust live in the
//! [`signing`] crate (re-exported here), which has no WebAssembly runtime dependency so build
//! pipelines can sign without it.
//!
//! A host application verifies a policy once and runs its components on one [`Host`]:
//!
//! ```no_run
//! # #[cfg(feature = "runtime")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use std::sync::Arc;
//!
//! use capgate::signing::{StateStore, TrustRoot};
//! use capgate::{Host, HostConfig, VerifiedPolicy};
//!
//! let trust = TrustRoot::load(Path::new("trust.yaml"))?;
//! let state = StateStore::at("/var/lib/capgate");
//! // Signatures, expiry, rollback, digest pins and artifact signatures are all checked here.
//! let policy = Arc::new(VerifiedPolicy::load(Path::new("policy.yaml"), &trust, &state)?);
//!
//! let host = Host::new(HostConfig::new().observe(|event| {
//!     if !event.decision.allowed {
//!         eprintln!("{} {} {}: {}", event.component, event.action, event.resource, event.decision.explain());
//!     }
//! }))?;
//! // The policy's `audit` section (log, level, durability, failure mode) is applied by the
//! // host; `close` seals the log with its final checkpoint.
//! let exit = host.run(&policy, "app", &["--verbose".to_owned()]).await?;
//! host.close()?;
//! # let _ = exit;
//! # Ok(()) }
//! ```
//!
//! `examples/embed.rs` is a complete host application built on this.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The modules, in the order data flows through them; each imports only from the ones above
// it (`tests/layering.rs` checks this):
//
//   policy    bytes of a verified bundle → parsed `Policy` (pure: reads no file)
//   authz     `Policy` → compiled `Authority`; `Request` → `Decision` (pure)
//   diff      two `Policy` versions → their permission delta (and, with a solver, the rules')
//   oci       `oci://` references → files pulled, digest-checked and cached (and `push`)
//   verified  signatures → parse → resolved against the filesystem → compiled: `VerifiedPolicy`
//   audit     decisions → tamper-evident records; logs read back, verified and replayed
//   learn     allowed decisions of audit logs → the narrowest policy that allows them
//   gate      the one route from an enforcement point to a decision: decide, record, return
//   runtime   engine, stores, limits, WASI adapters, calls between components, `serve`
//   inspect   a component's imports against a policy's grants
pub mod audit;
pub mod authz;
pub mod danger;
pub mod diff;
#[cfg(feature = "runtime")]
mod gate;
#[cfg(feature = "runtime")]
pub mod inspect;
pub mod learn;
#[cfg(feature = "oci")]
pub mod oci;
pub mod policy;
#[cfg(feature = "runtime")]
mod runtime;
mod verified;

#[cfg(feature = "runtime")]
pub use gate::DecisionEvent;
#[cfg(feature = "runtime")]
pub use runtime::serve::{servable, serve, serve_versions};
#[cfg(feature = "runtime")]
pub use runtime::{Cause, Host, HostConfig, LimitHit, Prepared, RequestFailure, RunError};
pub use verified::VerifiedPolicy;

pub use capgate_signing as signing;
