//! Errors of the signing crate, and the small file helpers that attach paths to I/O errors.
//!
//! Every variant carries what a person needs to act: which file, which key, which role, what
//! was expected. Messages are lowercase, put user input in backticks and end with a hint when
//! there is an obvious fix. Nothing here decides trust; it only reports.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Sha256;
use crate::key::KeyId;

/// What broad class of failure an [`Error`] is, for callers that map errors to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// An input file does not exist.
    MissingInput,
    /// An input exists but is malformed or inconsistent.
    Invalid,
    /// A signature, trust, expiry or rollback check refused the input.
    Trust,
    /// An output could not be written (or would have replaced a file).
    CannotCreate,
    /// Another I/O failure.
    Io,
}

/// One signature entry that did not count toward a threshold, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureProblem {
    /// The key id is not in the trust root.
    UnknownKey {
        /// The key id the entry names.
        keyid: KeyId,
    },
    /// The key is trusted, but not for the role (or key list) this check needs.
    NotAllowed {
        /// The trust root's name for the key.
        name: String,
        /// The key id.
        keyid: KeyId,
    },
    /// The signature bytes do not verify under the named key.
    BadSignature {
        /// The trust root's name for the key.
        name: String,
        /// The key id.
        keyid: KeyId,
    },
    /// The same key signed more than once; it counts once.
    Duplicate {
        /// The trust root's name for the key.
        name: String,
    },
}

impl fmt::Display for SignatureProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKey { keyid } => {
                write!(f, "key id `{keyid}` is not in the trust root")
            }
            Self::NotAllowed { name, .. } => {
                write!(f, "key `{name}` is trusted, but not for this")
            }
            Self::BadSignature { name, keyid } => {
                write!(
                    f,
                    "signature by `{name}` (key id `{keyid}`) does not verify"
                )
            }
            Self::Duplicate { name } => write!(f, "key `{name}` signed more than once"),
        }
    }
}

/// The digest and size a signature covers, and those of the file as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// The digest the signature covers.
    pub expected: Sha256,
    /// The size the signature covers.
    pub expected_size: u64,
    /// The digest of the file now.
    pub found: Sha256,
    /// The size of the file now.
    pub found_size: u64,
}

/// Why the signatures on a file did not meet a requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// What was being checked, e.g. "role `policy`".
    pub what: String,
    /// Signatures needed.
    pub threshold: usize,
    /// Names of the keys that would count.
    pub accepted: Vec<String>,
    /// Names of the keys whose signatures verified.
    pub valid: Vec<String>,
    /// Entries that did not count, and why.
    pub problems: Vec<SignatureProblem>,
}

/// An error from key handling, signing or verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {}", path.display(), io_message(source))]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// An output file exists already.
    #[error("{}: already exists; refusing to replace it (hint: pass `--force` or choose another name)", path.display())]
    WouldOverwrite {
        /// The file that exists.
        path: PathBuf,
    },

    /// A key file is not in the expected format.
    #[error("{}not {expected}: {detail}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    KeyFormat {
        /// The key file, when it came from one.
        path: Option<PathBuf>,
        /// What the file should have been.
        expected: &'static str,
        /// The decoder's complaint.
        detail: String,
    },

    /// A YAML or JSON document failed to parse or has the wrong shape.
    #[error("{}:{line}:{column}: {message}{}", path.display(), hint_suffix(hint))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What was wrong, and what was expected.
        message: String,
        /// How to fix it, when that is clear.
        hint: Option<String>,
    },

    /// The signature file is for another kind of payload (an artifact signature presented for
    /// a policy, or the reverse).
    #[error("{}: this signature is for {found}, not {expected} (hint: sign it with `capgate sign {expected_cmd}`)", path.display())]
    WrongPayloadType {
        /// The signature file.
        path: PathBuf,
        /// The payload type needed.
        expected: &'static str,
        /// The payload type found.
        found: String,
        /// The `sign` subcommand for the expected kind.
        expected_cmd: &'static str,
    },

    /// A signed file's bytes differ from what its signature covers.
    #[error("{}: content does not match its signature: signed sha256 `{}` ({} bytes), found `{}` ({} bytes); the file changed after signing", path.display(), digests.expected, digests.expected_size, digests.found, digests.found_size)]
    ContentMismatch {
        /// The changed file.
        path: PathBuf,
        /// What the signature covers and what the file has now.
        digests: Box<Digests>,
    },

    /// There is no signature file for something that must be signed.
    #[error("{}: not signed: `{}` does not exist (hint: sign it with `capgate sign {kind} {} --key KEY`)", path.display(), sig.display(), path.display())]
    Unsigned {
        /// The file that should be signed.
        path: PathBuf,
        /// Where its signature was looked for.
        sig: PathBuf,
        /// `artifact` or `policy`.
        kind: &'static str,
    },

    /// The state store (rollback protection) cannot be read or written.
    #[error("{}: rollback state unusable: {message} (hint: {hint})", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What went wrong.
        message: String,
        /// What to do.
        hint: &'static str,
    },

    /// A policy references a file its signature does not cover.
    #[error("{}: references `{file}`, which its signature does not cover (hint: sign the policy again)", path.display())]
    NotCovered {
        /// The policy file.
        path: PathBuf,
        /// The referenced file, as the policy names it.
        file: String,
    },

    /// An existing signature file covers different content than the file now has.
    #[error("{}: holds {signatures} signature{} over different content than `{}` has now; refusing to add one over the new content to it (hint: sign with `--replace` to discard them and start over; every co-signer then signs the new content)", sig.display(), if *signatures == 1 { "" } else { "s" }, path.display())]
    StaleSignature {
        /// The signed file.
        path: PathBuf,
        /// Its signature file.
        sig: PathBuf,
        /// How many signatures it holds over the old content.
        signatures: usize,
    },

    /// Not enough valid signatures by the keys this check accepts.
    #[error("{}: {} needs {} valid signature{} by {}; found {}{}", path.display(), shortfall.what, shortfall.threshold, plural(shortfall.threshold), list_or_none(&shortfall.accepted), count_valid(&shortfall.valid), problems_suffix(&shortfall.problems))]
    NotTrusted {
        /// The signed file.
        path: PathBuf,
        /// What was needed and what was found.
        shortfall: Box<Shortfall>,
    },

    /// The policy's `expires` instant has passed.
    #[error("{}: policy `{name}` expired at {expires} (hint: sign a new version with a later `expires`)", path.display())]
    Expired {
        /// The policy file.
        path: PathBuf,
        /// The policy name.
        name: String,
        /// The expiry, RFC 3339.
        expires: String,
    },

    /// The policy has the version this host accepted last, with other content: a changed
    /// policy needs a new version, or it could be swapped for another of the same version.
    #[error("{}: policy `{name}` version {version} differs from the version {version} this host already accepted (hint: give the changed policy a higher `version` and sign it)", path.display())]
    VersionReused {
        /// The policy file.
        path: PathBuf,
        /// The policy name.
        name: String,
        /// The version presented.
        version: u64,
    },

    /// The policy's `version` is older than one this host has accepted.
    #[error("{}: policy `{name}` version {version} is older than version {highest}, which this host already accepted (rollback refused)", path.display())]
    Rollback {
        /// The policy file.
        path: PathBuf,
        /// The policy name.
        name: String,
        /// The version presented.
        version: u64,
        /// The highest version accepted before.
        highest: u64,
    },
}

impl Error {
    /// The broad class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorClass::MissingInput
            }
            Self::Io { .. } => ErrorClass::Io,
            Self::WouldOverwrite { .. } => ErrorClass::CannotCreate,
            Self::KeyFormat { .. } | Self::Syntax { .. } | Self::StaleSignature { .. } => {
                ErrorClass::Invalid
            }
            Self::WrongPayloadType { .. }
            | Self::ContentMismatch { .. }
            | Self::NotCovered { .. }
            | Self::Unsigned { .. }
            | Self::State { .. }
            | Self::NotTrusted { .. }
            | Self::Expired { .. }
            | Self::Rollback { .. }
            | Self::VersionReused { .. } => ErrorClass::Trust,
        }
    }

    pub(crate) fn with_path(self, p: &Path) -> Self {
        match self {
            Self::KeyFormat {
                path: None,
                expected,
                detail,
            } => Self::KeyFormat {
                path: Some(p.to_owned()),
                expected,
                detail,
            },
            other => other,
        }
    }
}

fn io_message(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref()
        .map(|h| format!(" (hint: {h})"))
        .unwrap_or_default()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        return "no key (none is trusted for this)".into();
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    format!("{{{}}}", quoted.join(", "))
}

fn count_valid(valid: &[String]) -> String {
    match valid.len() {
        0 => "none".into(),
        _ => {
            let quoted: Vec<String> = valid.iter().map(|n| format!("`{n}`")).collect();
            format!("{} ({})", valid.len(), quoted.join(", "))
        }
    }
}

fn problems_suffix(problems: &[SignatureProblem]) -> String {
    if problems.is_empty() {
        return String::new();
    }
    let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!("; {}", all.join("; "))
}

/// Shortens user input quoted in a message so a hostile input cannot flood a terminal.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(MAX).collect();
    out.push('…');
    out
}

/// The largest key file read.
const MAX_KEY_BYTES: u64 = 64 * 1024;

/// Reads a UTF-8 key file (at most 64 KiB, a regular file), naming the file in any error.
pub(crate) fn read_to_string(path: &Path) -> Result<String, Error> {
    let bytes = read_bounded(path, MAX_KEY_BYTES)?;
    String::from_utf8(bytes).map_err(|_| Error::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// Reads a file's bytes: a regular file only (a FIFO, a device or a directory is refused
/// without blocking), refusing files above `limit` bytes before reading them.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read as _;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    // Opening a FIFO for reading blocks until a writer comes; non-blocking, it returns at
    // once and is refused below as not a regular file. Regular files ignore the flag.
    #[cfg(target_os = "linux")]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut open, NONBLOCK);
    let f = open.open(path).map_err(io)?;
    if !f.metadata().map_err(io)?.is_file() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let mut out = Vec::new();
    f.take(limit + 1).read_to_end(&mut out).map_err(io)?;
    if out.len() as u64 > limit {
        return Err(Error::Syntax {
            path: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("file is larger than the {limit}-byte limit for this kind of file"),
            hint: None,
        });
    }
    Ok(out)
}

/// `O_NONBLOCK` on Linux.
#[cfg(target_os = "linux")]
const NONBLOCK: i32 = 0o4000;

/// Reads the file at `path` as capgate reads every file it is given: a regular file only (a
/// FIFO, a device or a directory is refused without blocking), at most `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    read_bounded(path, limit)
}

/// Replaces `path` with `bytes` atomically: a reader sees the old file or the new one, never
/// a half-written one.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile_in(dir, path).map_err(io)?;
    tmp.1.write_all(bytes).map_err(io)?;
    tmp.1.sync_all().map_err(io)?;
    std::fs::rename(&tmp.0, path).map_err(io)
}

fn tempfile_in(dir: &Path, target: &Path) -> io::Result<(PathBuf, std::fs::File)> {
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for attempt in 0u32..100 {
        let candidate = dir.join(format!(".{base}.{}.{attempt}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(f) => return Ok((candidate, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not create a temporary file",
    ))
}
