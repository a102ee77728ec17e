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

pub use error::PolicyError;
pub use model::*;
pub use parse::parse;
