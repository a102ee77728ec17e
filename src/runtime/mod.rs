//! Running components: the engine, one store per instance with its limits, the WASI adapters
//! that stand in front of wasmtime-wasi, calls between components, and `serve`.
//!
//! Data flows in one direction here: [`Host`] builds a store per instance ([`store`]), whose
//! adapters ([`wasi`]) and call sites ([`broker`]) ask the component's
//! [`Gate`](crate::gate::Gate) for every decision. Nothing in this folder reaches
//! [`crate::authz`] or [`crate::audit`] except through the gate.

mod broker;
mod config;
mod engine;
mod error;
mod host;
mod limits;
mod links;
mod scope;
pub(crate) mod serve;
mod store;
mod wasi;
mod wave;

pub use config::{HostConfig, RequestFailure};
pub use error::{Cause, LimitHit, RunError};
pub use host::{Host, Prepared};
pub(crate) use limits::Fallback;
