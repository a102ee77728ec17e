//! Errors of the policy layer: located parse and validation errors, missing files, rules
//! errors, and trust failures passed through from `capgate-signing`.

use std::path::PathBuf;

/// An error loading, parsing or validating a policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy or a rules file is malformed or inconsistent.
    #[error("{}:{line}:{column}: {message}{}", path.display(), hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What is wrong and what was expected.
        message: String,
        /// How to fix it, when that is clear.
        hint: Option<String>,
    },

    /// A file the policy names does not exist.
    #[error("{}:{line}:{column}: {what} `{}` does not exist (hint: paths are relative to the policy file)", path.display(), file.display())]
    MissingFile {
        /// The policy file.
        path: PathBuf,
        /// Where the reference is.
        line: u64,
        /// Where the reference is.
        column: u64,
        /// What the file was for.
        what: String,
        /// The resolved path.
        file: PathBuf,
    },

    /// A component's artifact does not have the digest the policy pins.
    #[error("component `{component}`: {} has sha256 `{found}`, but the policy pins `{expected}` (hint: rebuild the artifact, or update the pin and sign the policy again)", artifact.display())]
    PinMismatch {
        /// The component.
        component: String,
        /// Its artifact.
        artifact: PathBuf,
        /// The pinned digest.
        expected: capgate_signing::Sha256,
        /// The artifact's digest.
        found: capgate_signing::Sha256,
    },

    /// Signature, trust, expiry, rollback or I/O failure.
    #[error(transparent)]
    Signing(#[from] capgate_signing::Error),

    /// An artifact the policy names by an `oci://` reference could not be pulled, or was
    /// pulled without what verification needs.
    #[error("{}:{line}:{column}: {what}: {message}", path.display())]
    Fetch {
        /// The policy file.
        path: PathBuf,
        /// Where the reference is.
        line: u64,
        /// Where the reference is.
        column: u64,
        /// What the artifact is for.
        what: String,
        /// What went wrong.
        message: String,
        /// The kind of failure.
        class: FetchClass,
    },
}

/// The kind of failure of a pull from a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchClass {
    /// A malformed reference or manifest.
    Invalid,
    /// The manifest or blob does not exist.
    Missing,
    /// Integrity or access was refused: a digest mismatch, no signature, no access.
    Trust,
    /// The registry or the local cache failed.
    Io,
}

impl PolicyError {
    /// Turns a YAML syntax error into [`PolicyError::Invalid`], letting `rewrite` replace the
    /// parser's wording for shapes it explains poorly (untagged alternatives).
    pub(crate) fn from_yaml(
        e: capgate_signing::Error,
        rewrite: impl Fn(&str) -> Option<(String, String)>,
    ) -> Self {
        match e {
            capgate_signing::Error::Syntax {
                path,
                line,
                column,
                message,
                hint,
            } => {
                let (message, hint) = match rewrite(&message) {
                    Some((m, h)) => (m, Some(h)),
                    None => (message, hint),
                };
                Self::Invalid {
                    path,
                    line,
                    column,
                    message,
                    hint,
                }
            }
            other => Self::Signing(other),
        }
    }
}
