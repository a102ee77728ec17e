//! capgate runs WebAssembly components under signed, capability-based policies.
//!
//! Data flows one way: verified bytes ([`signing`]) → parsed policy ([`policy`]) → compiled
//! authorisation ([`authz`]) → running components → decisions. Signing and trust live in the
//! [`signing`] crate (re-exported here), which has no WebAssembly runtime dependency so build
//! pipelines can sign without it.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod authz;
pub mod policy;

pub use capgate_signing as signing;
