//! Reading logs back: line by line, verifying the chain and checkpoints, and replaying.

use std::collections::BTreeSet;

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};

use capgate_signing::{Role, SignatureEntry, TrustRoot};
use serde_json::{Map, Value};

use super::Sha256;
use super::chain::checkpoint_message;
use super::record::{DecisionRecord, Gap, PolicyEvent};

/// The longest line a log may have.
const MAX_LINE: usize = 1 << 20;

/// One line of a log, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// The file it was read from.
    pub file: PathBuf,
    /// Its line number (from 1).
    pub line: u64,
    /// `seq`.
    pub seq: u64,
    /// `ts`.
    pub ts: String,
    /// `prev`.
    pub prev: Sha256,
    /// SHA-256 of the line itself (what the next line's `prev` must be).
    pub hash: Sha256,
    /// What kind of record it is.
    pub kind: LineKind,
}

/// The kinds of record.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LineKind {
    /// A decision.
    Decision(Box<DecisionRecord>),
    /// Records lost while the log could not be written.
    Gap(Gap),
    /// The policy served changed, was refused, or expired.
    Policy(Box<PolicyEvent>),
    /// The start of a file; `checkpoints` is the key id that signs this chain's checkpoints.
    Start {
        /// The key id, if the writer signs checkpoints.
        checkpoints: Option<String>,
        /// The log it belongs to (the hash of the log's first line), in a file that
        /// continues another.
        log: Option<Sha256>,
        /// Records between checkpoints, if the writer signs them.
        every: Option<u64>,
    },
    /// A signed checkpoint over `(seq, prev)`.
    Checkpoint {
        /// The signatures.
        signatures: Vec<SignatureEntry>,
    },
}

/// A line that is not what it must be, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct Broken {
    /// The file.
    pub file: PathBuf,
    /// The first bad line (1-based; 0 for the file as a whole).
    pub line: u64,
    /// What is wrong with it.
    pub message: String,
}

/// Reads a log file line by line.
pub struct LogReader {
    file: PathBuf,
    reader: BufReader<Box<dyn std::io::Read + Send>>,
    line: u64,
    done: bool,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("file", &self.file)
            .field("line", &self.line)
            .finish()
    }
}

impl LogReader {
    /// Opens a log file: a regular file (a FIFO or a device is refused without blocking).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut open = std::fs::OpenOptions::new();
        open.read(true);
        // O_NONBLOCK: opening a FIFO returns at once (regular files ignore the flag).
        #[cfg(target_os = "linux")]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut open, 0o4000);
        let f = open.open(path)?;
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Self::from_reader(path, f))
    }

    /// Reads a log from any reader; `name` is used in messages.
    pub fn from_reader(name: &Path, r: impl std::io::Read + Send + 'static) -> Self {
        Self {
            file: name.to_owned(),
            reader: BufReader::new(Box::new(r)),
            line: 0,
            done: false,
        }
    }

    fn broken(&self, message: impl Into<String>) -> Broken {
        Broken {
            file: self.file.clone(),
            line: self.line,
            message: message.into(),
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<LogLine, Broken>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf);
        self.line += 1;
        let result = match read {
            Ok(0) => {
                self.done = true;
                return None;
            }
            Err(e) => Err(self.broken(format!("cannot read: {e}"))),
            Ok(_) if buf.len() > MAX_LINE => {
                Err(self.broken(format!("the line is longer than {MAX_LINE} bytes")))
            }
            Ok(_) => match buf.strip_suffix(b"\n") {
                None => Err(self.broken(
                    "the line is incomplete (no newline at the end): the file was truncated, or a write was cut off",
                )),
                Some(body) => parse_line(body).map_err(|m| self.broken(m)).map(|mut l| {
                    l.file = self.file.clone();
                    l.line = self.line;
                    l
                }),
            },
        };
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}

fn parse_line(body: &[u8]) -> Result<LogLine, String> {
    let hash = Sha256::of(body);
    let mut map: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("the line is not a JSON object".into()),
        Err(e) => return Err(format!("the line is not valid JSON: {e}")),
    };
    let seq = map
        .remove("seq")
        .and_then(|v| v.as_u64())
        .ok_or("the record has no `seq` (a non-negative integer)")?;
    let ts = match map.remove("ts") {
        Some(Value::String(s)) if super::record::parse_ts(&s).is_ok() => s,
        _ => return Err("the record has no `ts` (an RFC 3339 timestamp)".into()),
    };
    let prev = map
        .remove("prev")
        .and_then(|v| v.as_str().and_then(|s| s.parse::<Sha256>().ok()))
        .ok_or("the record has no `prev` (64 hex digits)")?;
    let only = |allowed: &[&str]| match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "unexpected field `{k}` in a `{}` record",
            map["type"]
        )),
        None => Ok(()),
    };
    let kind = match map.get("type").and_then(Value::as_str) {
        None if !map.contains_key("type") => LineKind::Decision(Box::new(
            serde_json::from_value(Value::Object(map))
                .map_err(|e| format!("the decision record is malformed: {e}"))?,
        )),
        Some("gap") => LineKind::Gap(
            serde_json::from_value(Value::Object(map))
                .map_err(|e| format!("the gap record is malformed: {e}"))?,
        ),
        Some("policy") => LineKind::Policy(Box::new(
            serde_json::from_value(Value::Object(map))
                .map_err(|e| format!("the policy record is malformed: {e}"))?,
        )),
        Some("start") => {
            only(&["type", "capgate", "checkpoints", "log"])?;
            LineKind::Start {
                checkpoints: map
                    .get("checkpoints")
                    .and_then(|c| c.get("keyid"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                every: map
                    .get("checkpoints")
                    .and_then(|c| c.get("every"))
                    .and_then(Value::as_u64),
                log: match map.get("log") {
                    None => None,
                    Some(v) => Some(
                        v.as_str()
                            .and_then(|s| s.parse().ok())
                            .ok_or("the start record's `log` is not 64 hex digits")?,
                    ),
                },
            }
        }
        Some("checkpoint") => {
            only(&["type", "signatures"])?;
            LineKind::Checkpoint {
                signatures: map
                    .remove("signatures")
                    .and_then(|s| serde_json::from_value(s).ok())
                    .ok_or("the checkpoint has no well-formed `signatures`")?,
            }
        }
        _ => return Err(format!("unknown record type {}", map["type"])),
    };
    Ok(LogLine {
        file: PathBuf::new(),
        line: 0,
        seq,
        ts,
        prev,
        hash,
        kind,
    })
}

/// What verification established.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Lines read.
    pub records: u64,
    /// Decisions recorded (a record that folds repeated denials counts each of them).
    pub decisions: u64,
    /// Gap records, and how many records they say were lost.
    pub gaps: u64,
    /// Records lost according to gap records.
    pub missed: u64,
    /// Policy records: versions activated, refused or expired while serving.
    pub policy_events: u64,
    /// Checkpoints whose signatures met the trust root's `audit` role.
    pub checkpoints: u64,
    /// Names of the keys that signed them.
    pub signers: BTreeSet<String>,
    /// The first and last `seq`.
    pub seqs: Option<(u64, u64)>,
    /// Whether the last line is a verified checkpoint (nothing after it can have been cut off
    /// without breaking a signature).
    pub sealed: bool,
    /// What the checkpoints prove.
    pub proof: Proof,
    /// Things that verification could not rule out.
    pub warnings: Vec<String>,
}

/// What a log's checkpoints prove about its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Proof {
    /// Every record is covered by a checkpoint the trust root's `audit` role signed: no
    /// record can have been edited, removed, inserted or cut off without detection.
    Proven,
    /// Not every record is covered by a valid checkpoint, although checkpoints were to be
    /// expected (the trust root has an `audit` role, or the log's writer declared a key).
    Unproven {
        /// The last `seq` a valid checkpoint covers (`None`: none does).
        through: Option<u64>,
        /// The last `seq` of the log.
        last: u64,
        /// Whether the log's writer declared a checkpoint key (so a log still being written
        /// may end with records its next checkpoint will cover).
        declared: bool,
        /// Records between checkpoints, as the writer declared (1000 if it did not say).
        every: u64,
        /// Why this is not proven, in words.
        why: String,
    },
    /// The log has no checkpoints and nothing said it should: the chain is intact, but whoever
    /// can edit the file can rewrite it and recompute the chain (not tamper-evident).
    #[default]
    ChainOnly,
    /// The log has checkpoints, but no trust root was given to check them.
    Unchecked,
}

/// Verifies log files: the chain within and across them (they are ordered by their first
/// `seq`, so rotated files can be given in any order) and every checkpoint's signatures
/// against the trust root's `audit` role. Without `trust`, checkpoints are not checked and a
/// warning says so. With `live`, records after the last checkpoint are accepted with a
/// warning (a log still being written); otherwise a log whose writer signed checkpoints must
/// end with one.
pub fn verify(
    files: &[PathBuf],
    trust: Option<&TrustRoot>,
    live: bool,
) -> Result<Verified, Broken> {
    let mut ordered = Vec::new();
    for f in files {
        let mut reader = LogReader::open(f).map_err(|e| Broken {
            file: f.clone(),
            line: 0,
            message: format!("cannot open: {e}"),
        })?;
        let first = match reader.next() {
            Some(Ok(l)) => l.seq,
            Some(Err(b)) => return Err(b),
            None => {
                return Err(Broken {
                    file: f.clone(),
                    line: 0,
                    message: "the file is empty".into(),
                });
            }
        };
        ordered.push((first, f.clone()));
    }
    ordered.sort();
    let mut lines: Box<dyn Iterator<Item = Result<LogLine, Broken>>> = Box::new(std::iter::empty());
    for (_, f) in ordered {
        let path = f.clone();
        let reader =
            std::iter::once_with(move || LogReader::open(&path)).flat_map(move |r| match r {
                Ok(r) => Box::new(r) as Box<dyn Iterator<Item = _>>,
                Err(e) => Box::new(std::iter::once(Err(Broken {
                    file: f.clone(),
                    line: 0,
                    message: format!("cannot open: {e}"),
                }))),
            });
        lines = Box::new(lines.chain(reader));
    }
    verify_lines(lines, trust, live)
}

/// [`verify`] over lines already read.
pub fn verify_lines(
    lines: impl IntoIterator<Item = Result<LogLine, Broken>>,
    trust: Option<&TrustRoot>,
    live: bool,
) -> Result<Verified, Broken> {
    let mut v = Verified::default();
    let mut last: Option<LogLine> = None;
    let mut signing_key: Option<(String, PathBuf, u64)> = None;
    let requirement = trust.map(|t| t.role(Role::Audit));
    let mut unchecked_checkpoints = 0u64;
    // The log's identity: the hash of its first line, or what a continuing file's `start`
    // names; checkpoints are signed over it.
    let mut identity: Option<Sha256> = None;
    let mut covered: Option<u64> = None;
    let mut declared_every = 1000u64;
    for l in lines {
        let l = l?;
        let bad = |message: String| Broken {
            file: l.file.clone(),
            line: l.line,
            message,
        };
        match &last {
            None => {
                if l.seq == 0 {
                    if l.prev != Sha256::from_bytes([0; 32]) {
                        return Err(bad(
                            "the first record (seq 0) must have `prev` of 64 zeros".into()
                        ));
                    }
                    identity = Some(l.hash);
                } else {
                    v.warnings.push(format!(
                        "the log starts at seq {} ({}:{}): it continues a file not given here, and the records before it were not checked",
                        l.seq,
                        l.file.display(),
                        l.line
                    ));
                }
            }
            Some(p) => {
                if l.seq != p.seq + 1 {
                    let what = if l.seq <= p.seq {
                        "a record was inserted here, or records are out of order"
                    } else {
                        "records are missing here, or records are out of order"
                    };
                    return Err(bad(format!("seq {} follows seq {}: {what}", l.seq, p.seq)));
                }
                if l.prev != p.hash {
                    return Err(Broken {
                        file: p.file.clone(),
                        line: p.line,
                        message: format!(
                            "the line does not match the hash the next record ({}:{}) holds for it in `prev`: it was edited",
                            l.file.display(),
                            l.line
                        ),
                    });
                }
            }
        }
        v.records += 1;
        v.seqs = Some((v.seqs.map_or(l.seq, |s| s.0), l.seq));
        v.sealed = false;
        match &l.kind {
            LineKind::Decision(r) => v.decisions += r.decisions(),
            LineKind::Gap(g) => {
                v.gaps += 1;
                v.missed += g.missed;
            }
            LineKind::Policy(_) => v.policy_events += 1,
            LineKind::Start {
                checkpoints,
                log,
                every,
            } => {
                if let Some(k) = checkpoints {
                    signing_key = Some((k.clone(), l.file.clone(), l.line));
                }
                if let Some(n) = every {
                    declared_every = *n;
                }
                match (identity, log) {
                    (None, Some(id)) => identity = Some(*id),
                    (Some(mine), Some(id)) if mine != *id => {
                        return Err(bad(format!(
                            "this `start` record names log {}, but the records before it belong to log {}: files of two logs were joined",
                            short(&id.to_string()),
                            short(&mine.to_string())
                        )));
                    }
                    _ => {}
                }
            }
            LineKind::Checkpoint { signatures } => match (trust, &requirement) {
                (Some(t), Some(req)) => {
                    let log = identity.unwrap_or(Sha256::from_bytes([0; 32]));
                    let message = checkpoint_message(&log, l.seq, &l.ts, &l.prev);
                    match t.check_signatures(&l.file, req, &message, signatures) {
                        Ok(names) => {
                            v.checkpoints += 1;
                            v.signers.extend(names);
                            v.sealed = true;
                            covered = Some(l.seq);
                        }
                        Err(e) => {
                            return Err(bad(format!(
                                "the checkpoint's signature is not valid: {}",
                                first_line(&e.to_string())
                            )));
                        }
                    }
                }
                _ => unchecked_checkpoints += 1,
            },
        }
        last = Some(l);
    }
    let Some(last) = last else {
        return Err(Broken {
            file: PathBuf::from("<log>"),
            line: 0,
            message: "the log is empty".into(),
        });
    };
    if unchecked_checkpoints > 0 {
        v.warnings.push(format!(
            "{unchecked_checkpoints} checkpoint(s) not checked: no trust root was given (`--trust`)"
        ));
    }
    let expects_checkpoints = trust.is_some_and(|t| t.has_role(Role::Audit));
    v.proof = if v.sealed {
        Proof::Proven
    } else if trust.is_none() {
        if unchecked_checkpoints > 0 || signing_key.is_some() {
            Proof::Unchecked
        } else {
            Proof::ChainOnly
        }
    } else if let Some((key, file, line)) = &signing_key {
        Proof::Unproven {
            through: covered,
            last: last.seq,
            declared: true,
            every: declared_every,
            why: format!(
                "the log ends at {}:{} with records no checkpoint covers, although its writer signs checkpoints (key {}, declared at {}:{}): the end of the log may have been cut off",
                last.file.display(),
                last.line,
                short(key),
                file.display(),
                line
            ),
        }
    } else if expects_checkpoints {
        Proof::Unproven {
            through: covered,
            last: last.seq,
            declared: false,
            every: 0,
            why: "the log has no checkpoint, although the trust root's `audit` role says who signs this host's logs: its chain is intact, but anyone who can edit the file could have rewritten it and recomputed the chain".into(),
        }
    } else {
        Proof::ChainOnly
    };
    if let Proof::Unproven {
        why,
        declared: true,
        ..
    } = &v.proof
        && live
    {
        v.warnings.push(format!("{why} (accepted: `--live`)"));
    }
    if v.proof == Proof::ChainOnly {
        v.warnings.push(
            "the log has no checkpoints: its chain is intact, but records cut off at the end cannot be ruled out, and whoever can edit the file can rewrite it (chain only, not tamper-evident)".into(),
        );
    }
    Ok(v)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn short(keyid: &str) -> &str {
    &keyid[..keyid.len().min(16)]
}
