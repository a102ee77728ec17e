//! The audit log: every decision as a record in a tamper-evident chain.
//!
//! An [`Auditor`] sits between the decision function and the enforcement point. It turns a
//! decision into a [`DecisionRecord`] (sensitive values as salted hashes), hands it to an
//! [`AuditSink`], and applies the failure mode: with [`OnFailure::FailClosed`] a decision whose
//! record cannot be written becomes a deny; with [`OnFailure::Continue`] it stands, and a
//! [`Gap`] record says how many records were lost once the sink can write again.
//!
//! Sinks: [`JsonlSink`] (the file format of `docs/audit.md`: chained, locked, rotated,
//! checkpointed), [`MemorySink`] (the same lines, in memory) and [`TracingSink`] (decisions as
//! `tracing` events for the host's own subscriber). [`verify`] checks a log, [`LogReader`]
//! reads one back, and [`replay`] decides its requests again under another policy.

mod anchor;
mod chain;
mod file;
#[cfg(feature = "otlp")]
mod otlp;
mod read;
mod record;
mod replay;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use anchor::{anchor_path, check_anchor};
pub use capgate_signing::Sha256;
pub use chain::{CHECKPOINT_PAYLOAD_TYPE, Checkpointer, checkpoint_message};
pub use file::{JsonlOptions, JsonlSink, LineMirror};
#[cfg(feature = "otlp")]
pub use otlp::{OtlpError, OtlpExporter, OtlpOptions, OtlpStats};
pub use read::{Broken, LineKind, LogLine, LogReader, Proof, Verified, verify, verify_lines};
pub use record::{
    BadTimestamp, DecisionRecord, Entry, Gap, GapTag, MalformedRecord, PolicyChange, PolicyEvent,
    PolicyRef, PolicyTag, Verdict, parse_ts, timestamp,
};
pub use replay::{Change, replay};

use crate::VerifiedPolicy;
use crate::authz::{Decision, Request};
pub use crate::policy::{AuditLevel, Durability, OnFailure};

/// Why a record could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// An I/O operation on the log failed.
    #[error("cannot {op} the audit log `{path}`: {source}")]
    Io {
        /// The log.
        path: std::path::PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The log is in a state this writer will not append to.
    #[error("audit log `{path}`: {message}")]
    Log {
        /// The log.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The sink was closed.
    #[error("the audit log `{0}` is closed")]
    Closed(std::path::PathBuf),
}

/// Where records go.
pub trait AuditSink: Send + Sync {
    /// Writes one entry. `Ok` means it is stored as durably as the sink promises.
    fn append(&self, entry: &Entry) -> Result<(), AuditError>;

    /// Finishes the log (a final checkpoint, a flush). Later appends fail.
    fn close(&self) -> Result<(), AuditError> {
        Ok(())
    }
}

struct Lost {
    missed: u64,
    from: String,
    to: String,
    error: String,
}

/// Identical denials repeated one after another, counted instead of written: the first is
/// written as it happens, the repeats become one record with a count and a time range.
struct Fold {
    record: DecisionRecord,
    count: u64,
    from: String,
    to: String,
    started: std::time::Instant,
}

/// The longest a fold stays open, and the most denials it counts, before it is written.
const FOLD_FOR: std::time::Duration = std::time::Duration::from_secs(1);
const FOLD_MAX: u64 = 100_000;

/// Records decisions in a sink, with a level, a failure mode and a salt for sensitive values.
pub struct Auditor {
    sink: Box<dyn AuditSink>,
    level: AuditLevel,
    on_failure: OnFailure,
    salt: [u8; 32],
    salt_id: String,
    /// Records lost since the last successful write (`continue` mode, or folded denials that
    /// could not be written).
    lost: Mutex<Option<Lost>>,
    missed_total: AtomicU64,
    /// Fold identical repeated denials (see [`Auditor::fold_repeats`]).
    fold: Option<Mutex<Option<Fold>>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("level", &self.level)
            .field("on_failure", &self.on_failure)
            .field("salt_id", &self.salt_id)
            .finish_non_exhaustive()
    }
}

impl Auditor {
    /// Records into `sink`: denials only, fail-closed, with a random salt (so hashes of
    /// sensitive values cannot be compared across logs unless [`Auditor::salt`] sets one).
    pub fn new(sink: impl AuditSink + 'static) -> Self {
        let mut salt = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
        Self {
            sink: Box::new(sink),
            level: AuditLevel::Deny,
            on_failure: OnFailure::FailClosed,
            salt,
            salt_id: salt_id(&salt),
            lost: Mutex::new(None),
            missed_total: AtomicU64::new(0),
            fold: None,
        }
    }

    /// Folds identical denials that follow one another (same component, action, resource,
    /// reasons and errors): the first is written as it happens; the repeats are counted and
    /// written as one record with `count` and `until` when a different decision comes, after
    /// a second, after 100,000 of them, or at close. No decision disappears: the sum of the
    /// records' counts is the number of decisions. Allowed decisions are never folded.
    pub fn fold_repeats(mut self, on: bool) -> Self {
        self.fold = on.then(|| Mutex::new(None));
        self
    }

    /// Which decisions are recorded.
    pub fn level(mut self, level: AuditLevel) -> Self {
        self.level = level;
        self
    }

    /// What happens when a record cannot be written.
    pub fn on_failure(mut self, mode: OnFailure) -> Self {
        self.on_failure = mode;
        self
    }

    /// The secret salt of the hashes of sensitive values. Keep it out of the log: with it,
    /// anyone can test guesses of a hashed value.
    pub fn salt(mut self, salt: [u8; 32]) -> Self {
        self.salt = salt;
        self.salt_id = salt_id(&salt);
        self
    }

    /// The salted hash of a sensitive value, as records carry it:
    /// `salted-sha256:<salt id>:<hex>`.
    pub fn hash_sensitive(&self, value: &[u8]) -> String {
        let mut buf = Vec::with_capacity(32 + value.len());
        buf.extend_from_slice(&self.salt);
        buf.extend_from_slice(value);
        format!("salted-sha256:{}:{}", self.salt_id, Sha256::of(&buf))
    }

    /// Records lost so far (failure mode `continue`).
    pub fn missed(&self) -> u64 {
        self.missed_total.load(Ordering::Relaxed)
    }

    /// Records `decision`, already made on `request` by `component` under `policy`, and
    /// returns the decision to enforce: a deny if the log is fail-closed and the record could
    /// not be written. This is the audit stage alone; a running host's enforcement points
    /// reach it only through their gate, which decides, records and enforces in one step.
    pub fn record(
        &self,
        policy: &VerifiedPolicy,
        component: &str,
        request: &Request,
        decision: Decision,
    ) -> Decision {
        self.admit(policy, component, request, decision, Vec::new())
    }

    /// Whether the level asks for `decision` to be written.
    pub(crate) fn keeps(&self, decision: &Decision) -> bool {
        !(decision.allowed && self.level == AuditLevel::Deny)
    }

    /// Records `decision` (if the level asks for it) and returns the decision to enforce.
    /// `sensitive` values are recorded only as salted hashes. A decision with a
    /// [`report`](Decision::report) gets a second record for it, marked not enforced.
    pub(crate) fn admit(
        &self,
        policy: &VerifiedPolicy,
        component: &str,
        request: &Request,
        mut decision: Decision,
        sensitive: Vec<(&'static str, Vec<u8>)>,
    ) -> Decision {
        let report = decision.report.take();
        let mut enforced = self.admit_one(policy, component, request, decision, &sensitive, true);
        if let Some(would) = report {
            // What report-only rules would decide is only ever recorded: whatever becomes of
            // this record, the decision enforced is the one above.
            let _ = self.admit_one(
                policy,
                component,
                request,
                (*would).clone(),
                &sensitive,
                false,
            );
            enforced.report = Some(would);
        }
        enforced
    }

    fn admit_one(
        &self,
        policy: &VerifiedPolicy,
        component: &str,
        request: &Request,
        decision: Decision,
        sensitive: &[(&'static str, Vec<u8>)],
        enforced: bool,
    ) -> Decision {
        if !self.keeps(&decision) {
            return decision;
        }
        let mut record = DecisionRecord::new(
            PolicyRef::of(policy),
            component,
            policy
                .artifact(component)
                .map(|a| a.report().sha256.to_string())
                .unwrap_or_default(),
            request,
            &decision,
            sensitive
                .iter()
                .map(|(k, v)| (*k, self.hash_sensitive(v)))
                .collect(),
        );
        if !enforced {
            record.enforced = Some(false);
        }
        let ts = timestamp();
        if let Some(fold) = &self.fold {
            let mut fold = fold.lock().unwrap_or_else(|e| e.into_inner());
            if !decision.allowed
                && let Some(f) = fold.as_mut()
                && f.record == record
                && f.count < FOLD_MAX
                && f.started.elapsed() < FOLD_FOR
            {
                if f.count == 0 {
                    f.from = ts.clone();
                }
                f.count += 1;
                f.to = ts;
                return decision;
            }
            if let Some(f) = fold.take() {
                self.flush(f);
            }
            if !decision.allowed {
                *fold = Some(Fold {
                    record: record.clone(),
                    count: 0,
                    from: String::new(),
                    to: String::new(),
                    started: std::time::Instant::now(),
                });
            }
        }
        match self.write(Entry::Decision {
            ts: ts.clone(),
            record: Box::new(record),
        }) {
            Ok(()) => decision,
            Err(e) => match self.on_failure {
                OnFailure::FailClosed => {
                    let mut errors = decision.errors;
                    errors.push(format!("the audit record could not be written: {e}"));
                    Decision {
                        allowed: false,
                        reasons: if decision.allowed {
                            Vec::new()
                        } else {
                            decision.reasons
                        },
                        errors,
                        report: None,
                    }
                }
                OnFailure::Continue => {
                    self.missed_total.fetch_add(1, Ordering::Relaxed);
                    let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
                    match lost.as_mut() {
                        Some(l) => {
                            l.missed += 1;
                            l.to = ts;
                        }
                        None => {
                            *lost = Some(Lost {
                                missed: 1,
                                from: ts.clone(),
                                to: ts,
                                error: e.to_string(),
                            })
                        }
                    }
                    decision
                }
            },
        }
    }

    /// Writes the repeats a fold counted, if any, as one record. Their decisions were denials,
    /// already enforced; if the record cannot be written they are counted as lost, and a gap
    /// record says so once the sink writes again.
    fn flush(&self, f: Fold) {
        if f.count == 0 {
            return;
        }
        let mut record = f.record;
        record.count = Some(f.count);
        record.until = Some(f.to.clone());
        let entry = Entry::Decision {
            ts: f.from.clone(),
            record: Box::new(record),
        };
        if let Err(e) = self.write(entry) {
            self.missed_total.fetch_add(f.count, Ordering::Relaxed);
            let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
            match lost.as_mut() {
                Some(l) => {
                    l.missed += f.count;
                    l.to = f.to;
                }
                None => {
                    *lost = Some(Lost {
                        missed: f.count,
                        from: f.from,
                        to: f.to,
                        error: e.to_string(),
                    })
                }
            }
        }
    }

    /// Writes `entry`, preceded by a gap record if records were lost before it. No lock of
    /// the auditor's is held while the sink writes.
    fn write(&self, entry: Entry) -> Result<(), AuditError> {
        if self.on_failure == OnFailure::Continue || self.fold.is_some() {
            let pending = self.lost.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(l) = pending {
                let ts = entry.ts().to_owned();
                let gap = Entry::Gap {
                    ts,
                    gap: Gap {
                        kind: GapTag::Gap,
                        missed: l.missed,
                        from: l.from.clone(),
                        to: l.to.clone(),
                        error: l.error.clone(),
                    },
                };
                if let Err(e) = self.sink.append(&gap) {
                    // Still lost: put the count back, merged with anything lost meanwhile.
                    let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
                    *lost = Some(match lost.take() {
                        Some(later) => Lost {
                            missed: l.missed + later.missed,
                            from: l.from,
                            to: later.to,
                            error: later.error,
                        },
                        None => l,
                    });
                    return Err(e);
                }
            }
        }
        self.sink.append(&entry)
    }

    /// Records a change of the policy served ([`PolicyEvent`]), whatever the level: these
    /// are rare and say which version decided what follows.
    pub fn record_event(&self, event: PolicyEvent) -> Result<(), AuditError> {
        self.flush_repeats();
        self.write(Entry::Policy {
            ts: timestamp(),
            event: Box::new(event),
        })
    }

    /// Writes the repeats a fold still counts, if any (see [`Auditor::fold_repeats`]).
    pub fn flush_repeats(&self) {
        if let Some(fold) = &self.fold {
            let pending = fold.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(f) = pending {
                self.flush(f);
            }
        }
    }

    /// Closes the sink: the repeats a fold still counts, a final checkpoint and a flush.
    pub fn close(&self) -> Result<(), AuditError> {
        self.flush_repeats();
        self.sink.close()
    }
}

fn salt_id(salt: &[u8; 32]) -> String {
    let mut buf = b"capgate-audit-salt-id\0".to_vec();
    buf.extend_from_slice(salt);
    Sha256::of(&buf).to_string()[..16].to_owned()
}

/// Keeps the log in memory: the same chained lines a [`JsonlSink`] writes, for tests and for
/// hosts that ship records elsewhere themselves.
#[derive(Debug)]
pub struct MemorySink {
    state: Mutex<(chain::Chain, Vec<u8>, bool)>,
}

impl MemorySink {
    /// An empty log (a `start` record), checkpointed if `checkpoints` is given.
    pub fn new(checkpoints: Option<Checkpointer>) -> Self {
        let mut chain = chain::Chain::new(chain::Head::genesis(), checkpoints);
        let mut out = Vec::new();
        chain.push_start(&mut out, &timestamp());
        Self {
            state: Mutex::new((chain, out, false)),
        }
    }

    /// The log so far, as the bytes of a JSON Lines file.
    pub fn bytes(&self) -> Vec<u8> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// The log so far, line by line.
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.bytes())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl AuditSink for MemorySink {
    fn append(&self, entry: &Entry) -> Result<(), AuditError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (chain, out, closed) = &mut *st;
        if *closed {
            return Err(AuditError::Closed("<memory>".into()));
        }
        match entry {
            Entry::Decision { ts, record } => chain.push_record(out, ts, record),
            Entry::Gap { ts, gap } => chain.push_record(out, ts, gap),
            Entry::Policy { ts, event } => chain.push_record(out, ts, event),
        }
        Ok(())
    }

    fn close(&self) -> Result<(), AuditError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (chain, out, closed) = &mut *st;
        if !*closed {
            chain.push_checkpoint(out, &timestamp());
            *closed = true;
        }
        Ok(())
    }
}

/// Sends each record to the `tracing` subscriber of the host, as an event with target
/// `capgate::audit` (denials at `WARN`, allows and gaps at `INFO`). It has no chain: route it
/// somewhere durable, or use it beside a [`JsonlSink`].
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingSink;

impl AuditSink for TracingSink {
    fn append(&self, entry: &Entry) -> Result<(), AuditError> {
        match entry {
            Entry::Decision { ts, record: r } => {
                let reasons = r.reasons.join(",");
                let errors = r.errors.join("; ");
                if r.decision == Verdict::Deny {
                    tracing::warn!(target: "capgate::audit", ts = %ts, component = %r.component, action = %r.action, resource = %r.resource, decision = "deny", reasons = %reasons, errors = %errors, policy = %r.policy.name, policy_version = r.policy.version, "capgate decision");
                } else {
                    tracing::info!(target: "capgate::audit", ts = %ts, component = %r.component, action = %r.action, resource = %r.resource, decision = "allow", reasons = %reasons, errors = %errors, policy = %r.policy.name, policy_version = r.policy.version, "capgate decision");
                }
            }
            Entry::Gap { ts, gap } => {
                tracing::warn!(target: "capgate::audit", ts = %ts, missed = gap.missed, from = %gap.from, to = %gap.to, error = %gap.error, "capgate audit gap");
            }
            Entry::Policy { ts, event: e } => {
                tracing::warn!(target: "capgate::audit", ts = %ts, event = e.event.as_str(), policy = %e.policy.name, policy_version = e.policy.version, source = e.source.as_deref().unwrap_or(""), reason = e.reason.as_deref().unwrap_or(""), "capgate policy");
            }
        }
        Ok(())
    }
}

/// Sends each entry to several sinks; an entry counts as written only if every sink wrote it.
pub struct Tee(pub Vec<Box<dyn AuditSink>>);

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tee({} sinks)", self.0.len())
    }
}

impl AuditSink for Tee {
    fn append(&self, entry: &Entry) -> Result<(), AuditError> {
        let mut first = None;
        for s in &self.0 {
            if let Err(e) = s.append(entry) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn close(&self) -> Result<(), AuditError> {
        let mut first = None;
        for s in &self.0 {
            if let Err(e) = s.close() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl<T: AuditSink + ?Sized> AuditSink for std::sync::Arc<T> {
    fn append(&self, entry: &Entry) -> Result<(), AuditError> {
        (**self).append(entry)
    }

    fn close(&self) -> Result<(), AuditError> {
        (**self).close()
    }
}
