//! Exit codes (sysexits-style, as the spec lists them) and the CLI's error type.
//!
//! Every failure leaves the process with exactly one of these codes and one or two lines on
//! stderr. Trust failures are always 77, whatever else is also wrong.

use capgate_signing::ErrorClass;

use super::LogFormat;

/// The process exit codes capgate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    /// Bad command line.
    Usage = 64,
    /// Invalid policy, rules, key, signature file or component.
    DataErr = 65,
    /// An input file does not exist.
    NoInput = 66,
    /// A guest trapped or hit a limit.
    GuestFault = 69,
    /// capgate itself failed (e.g. the engine could not start).
    Software = 70,
    /// An output file could not be created.
    CantCreate = 73,
    /// Another I/O error.
    IoErr = 74,
    /// A signature, trust, expiry or rollback check refused the input.
    NoPerm = 77,
    /// An audit log's chain is intact, but not every record is proven by a checkpoint that
    /// should be there (`audit verify`).
    Unproven = 79,
}

impl Exit {
    fn class_name(self) -> &'static str {
        match self {
            Self::Usage => "usage",
            Self::DataErr => "invalid",
            Self::NoInput => "missing-input",
            Self::GuestFault => "guest-fault",
            Self::Software => "internal",
            Self::CantCreate => "cannot-create",
            Self::IoErr => "io",
            Self::NoPerm => "trust",
            Self::Unproven => "unproven",
        }
    }
}

/// An error on its way to stderr.
#[derive(Debug)]
pub(crate) struct CliError {
    /// The exit code.
    pub exit: Exit,
    message: String,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl CliError {
    /// An error with this exit code and message.
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    /// Writes the error to stderr in `format`.
    pub(crate) fn print(&self, format: LogFormat) {
        match format {
            // Messages may quote what a guest or an edited file chose: shown line by line,
            // each line escaped.
            LogFormat::Text => eprintln!(
                "error: {}",
                self.message
                    .lines()
                    .map(super::safe)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            LogFormat::Json => eprintln!(
                "{}",
                serde_json::json!({
                    "level": "error",
                    "exit": self.exit as u8,
                    "class": self.exit.class_name(),
                    "message": self.message,
                })
            ),
        }
    }
}

impl From<capgate_signing::Error> for CliError {
    fn from(e: capgate_signing::Error) -> Self {
        let exit = match e.class() {
            ErrorClass::MissingInput => Exit::NoInput,
            ErrorClass::Invalid => Exit::DataErr,
            ErrorClass::Trust => Exit::NoPerm,
            ErrorClass::CannotCreate => Exit::CantCreate,
            _ => Exit::IoErr,
        };
        Self::new(exit, e.to_string())
    }
}

impl From<capgate::policy::PolicyError> for CliError {
    fn from(e: capgate::policy::PolicyError) -> Self {
        use capgate::policy::PolicyError as P;
        match e {
            P::Signing(inner) => inner.into(),
            P::MissingFile { .. } => Self::new(Exit::NoInput, e.to_string()),
            P::PinMismatch { .. } => Self::new(Exit::NoPerm, e.to_string()),
            P::Fetch { class, .. } => Self::new(fetch_exit(class), e.to_string()),
            _ => Self::new(Exit::DataErr, e.to_string()),
        }
    }
}

impl From<capgate::RunError> for CliError {
    fn from(e: capgate::RunError) -> Self {
        use capgate::RunError as R;
        let exit = match &e {
            R::Trap { .. } | R::Limit { .. } => Exit::GuestFault,
            R::Invalid { .. } | R::Instantiate { .. } | R::Link { .. } => Exit::DataErr,
            R::NoSuchComponent { .. } | R::Call { .. } => Exit::Usage,
            R::Audit { .. } => Exit::CantCreate,
            R::Expired { .. } => Exit::NoPerm,
            _ => Exit::Software,
        };
        Self::new(exit, e.to_string())
    }
}

/// The exit code for a failed pull from a registry.
pub(super) fn fetch_exit(class: capgate::policy::FetchClass) -> Exit {
    use capgate::policy::FetchClass as F;
    match class {
        F::Invalid => Exit::DataErr,
        F::Missing => Exit::NoInput,
        F::Trust => Exit::NoPerm,
        _ => Exit::IoErr,
    }
}
