//! The hash chain: sequence numbers, `prev` links, start records and signed checkpoints.
//!
//! Every line is `{"seq":N,"ts":"...", <body>, "prev":"<SHA-256 of the previous line>"}`. The
//! first line of a new log has `prev` of 64 zeros; a file that continues another (rotation, or a
//! log reopened after a failure) starts with a `start` record linked to the last line of the
//! file before it and naming the log it belongs to (`log`: the hash of the log's first line, its
//! identity). Checkpoints sign `(log, seq, ts, head)`, where `head` is the checkpoint's own
//! `prev`, so a checkpoint cannot be carried into another log.

use capgate_signing::{SecretKey, SignatureEntry, pae};
use serde::Serialize;
use serde_json::json;

use super::Sha256;

/// DSSE payload type of a checkpoint signature.
pub const CHECKPOINT_PAYLOAD_TYPE: &str = "application/vnd.capgate.audit-checkpoint+json";

/// The bytes a checkpoint's signatures are over: the log's identity (the hash of its first
/// line), the checkpoint's `seq` and `ts`, and the hash of the line before it (`head`), so no
/// byte of a log's final checkpoint can change unnoticed and no checkpoint fits another log.
pub fn checkpoint_message(log: &Sha256, seq: u64, ts: &str, head: &Sha256) -> Vec<u8> {
    let body = json!({"capgate-checkpoint": 2, "log": log.to_string(), "seq": seq, "ts": ts, "head": head.to_string()});
    pae(CHECKPOINT_PAYLOAD_TYPE, body.to_string().as_bytes())
}

/// Signs checkpoints.
pub struct Checkpointer {
    key: std::sync::Arc<SecretKey>,
    every: u64,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("keyid", &self.key.public().id().to_string())
            .field("every", &self.every)
            .finish()
    }
}

impl Checkpointer {
    /// Signs a checkpoint with `key` after every `every` records (at least 1), and when the
    /// log is closed.
    pub fn new(key: impl Into<std::sync::Arc<SecretKey>>, every: u64) -> Self {
        Self {
            key: key.into(),
            every: every.max(1),
        }
    }
}

/// Where the chain stands: the next sequence number and the hash of the last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) next_seq: u64,
    pub(crate) prev: Sha256,
    /// Records since the last checkpoint.
    pub(crate) since: u64,
    /// The log's identity: the hash of its first line (`None` until it is written).
    pub(crate) log: Option<Sha256>,
    /// Lines (a `start` too) written since the last checkpoint.
    pub(crate) unsealed: bool,
}

impl Head {
    pub(super) fn genesis() -> Self {
        Self {
            next_seq: 0,
            prev: Sha256::from_bytes([0; 32]),
            since: 0,
            log: None,
            unsealed: false,
        }
    }
}

/// Encodes records into chained lines.
#[derive(Debug)]
pub(crate) struct Chain {
    pub head: Head,
    signer: Option<Checkpointer>,
}

#[derive(Serialize)]
struct Line<'a, B: Serialize> {
    seq: u64,
    ts: &'a str,
    #[serde(flatten)]
    body: &'a B,
    prev: String,
}

impl Chain {
    pub(super) fn new(head: Head, signer: Option<Checkpointer>) -> Self {
        Self { head, signer }
    }

    /// Appends one line for `body` to `out` and advances the chain.
    pub(super) fn push<B: Serialize>(&mut self, out: &mut Vec<u8>, ts: &str, body: &B) {
        let start = out.len();
        let line = Line {
            seq: self.head.next_seq,
            ts,
            body,
            prev: self.head.prev.to_string(),
        };
        // INVARIANT: the bodies are structs and maps of strings and integers, which always
        // serialise; should one ever fail, an empty object keeps the line well-formed.
        if serde_json::to_writer(&mut *out, &line).is_err() {
            out.truncate(start);
            out.extend_from_slice(b"{}");
        }
        self.head.prev = Sha256::of(&out[start..]);
        if self.head.next_seq == 0 {
            self.head.log = Some(self.head.prev);
        }
        out.push(b'\n');
        self.head.next_seq += 1;
    }

    /// A decision or gap record, followed by a checkpoint when one is due.
    pub(super) fn push_record<B: Serialize>(&mut self, out: &mut Vec<u8>, ts: &str, body: &B) {
        self.push(out, ts, body);
        self.head.since += 1;
        self.head.unsealed = true;
        if self
            .signer
            .as_ref()
            .is_some_and(|s| self.head.since >= s.every)
        {
            self.push_checkpoint(out, ts);
        }
    }

    /// The record that opens a file: which log it continues and how it is signed. It counts
    /// as a record, so a log closed without any decision still ends in a checkpoint.
    pub(super) fn push_start(&mut self, out: &mut Vec<u8>, ts: &str) {
        let mut body = serde_json::Map::new();
        body.insert("type".into(), "start".into());
        body.insert("capgate".into(), env!("CARGO_PKG_VERSION").into());
        if let Some(log) = self.head.log {
            body.insert("log".into(), log.to_string().into());
        }
        if let Some(s) = &self.signer {
            body.insert(
                "checkpoints".into(),
                json!({"keyid": s.key.public().id().to_string(), "every": s.every}),
            );
        }
        self.push(out, ts, &body);
        self.head.unsealed = true;
    }

    /// A signed checkpoint over the current head, if this chain signs and anything was
    /// recorded since the last one.
    pub(super) fn push_checkpoint(&mut self, out: &mut Vec<u8>, ts: &str) {
        let Some(signer) = &self.signer else { return };
        if !self.head.unsealed {
            return;
        }
        let log = self.head.log.unwrap_or(Sha256::from_bytes([0; 32]));
        let message = checkpoint_message(&log, self.head.next_seq, ts, &self.head.prev);
        let body = json!({
            "type": "checkpoint",
            "signatures": [SignatureEntry::sign(&signer.key, &message)],
        });
        self.push(out, ts, &body);
        self.head.since = 0;
        self.head.unsealed = false;
    }
}
