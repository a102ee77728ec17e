//! capgate runs WebAssembly components under signed, capability-based policies.
//!
//! This crate is the engine behind the `capgate` command. Signing and trust live in the
//! [`signing`] crate (re-exported here), which has no WebAssembly runtime dependency so build
//! pipelines can sign without it.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use capgate_signing as signing;
