//! Policies: the YAML format, its validated model, and the patterns and units it uses.
//!
//! Data flows one way: verified bytes ([`capgate_signing::PolicyBundle`]) → [`parse`] →
//! [`Policy`]. Compilation to Cedar and decisions live in [`crate::authz`]; this module never
//! decides anything.

mod error;
mod model;
mod parse;
pub mod pattern;
pub mod units;

/// The largest component artifact capgate will read (a file, or a layer from a registry).
pub(crate) const MAX_ARTIFACT_BYTES: u64 = 512 * 1024 * 1024;

pub use error::{FetchClass, PolicyError};
pub use model::{
    Access, AuditLevel, AuditSpec, CallGrant, ComponentPolicy, Durability, FileGrant, GrantId,
    HttpGrant, Input, Limits, LookupGrant, Network, OnFailure, Output, Policy, RulesSource,
    SocketGrant, Stdio, defaults,
};
pub use parse::{is_ident, otlp_endpoint, parse};
