//! The JSON Lines file sink: append-only, locked, chained across restarts and rotations.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::anchor::check_anchor;
use super::chain::{Chain, Checkpointer, Head};
use super::record::{Entry, timestamp};
use super::{AuditError, AuditSink, Durability, Sha256};

/// Records written between syncs in [`Durability::Batch`].
const BATCH: u32 = 64;

/// The longest line the sink will look back over to find where an existing log ends.
pub(super) const MAX_TAIL: u64 = 1 << 20;

/// Whether [`JsonlSink::write_locked`] syncs a write that is due for it itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncWhen {
    Now,
    /// The caller syncs, after letting go of the state lock.
    Later,
}

/// Settings of a [`JsonlSink`].
#[derive(Debug, Default)]
pub struct JsonlOptions {
    /// When records reach the disk.
    pub durability: Durability,
    /// Rotate the file once it is at least this many bytes: it is renamed to
    /// `FILE.<last seq, 12 digits>` and a new file continues the chain.
    pub rotate: Option<u64>,
    /// Sign checkpoints with this key.
    pub checkpoints: Option<Checkpointer>,
    /// Where this writer keeps the log's anchor: the `seq`, hash and length it left the file
    /// at (see [`anchor_path`]). With one, a log that does not still hold the line the anchor
    /// names (truncated, rewritten), or an existing log the anchor does not know, is refused
    /// instead of continued.
    pub anchor: Option<PathBuf>,
    /// Also hands every line, once written to the file, to this (in the order of the file).
    pub mirror: Option<Arc<dyn LineMirror>>,
}

/// Receives each line a [`JsonlSink`] writes, right after it reached the file and in file
/// order (e.g. [`super::OtlpExporter`]). Called with the sink's lock held: it must not block.
pub trait LineMirror: Send + Sync + std::fmt::Debug {
    /// `lines`: one or more complete lines, each ending in `\n`.
    fn lines(&self, lines: &[u8]);
}

struct State {
    file: Option<Arc<File>>,
    /// Which file `file` is: counts the files this sink has opened.
    file_id: u64,
    /// Length of the file after the last complete write.
    len: u64,
    chain: Chain,
    unsynced: u32,
    closed: bool,
    /// Nothing written yet: an existing log found on (re)open is continued.
    fresh: bool,
}

/// Appends chained records to a JSON Lines file.
///
/// The file is opened for appending and locked, so a second writer (another process) is
/// refused instead of interleaving a second chain. An existing log is continued: its last line
/// is read back and the chain goes on from it. A write that fails is cut off again (the file
/// is truncated to its last complete line) and reported; the next record reopens the file, so
/// a destination that recovers is written again, linked to what was written before.
pub struct JsonlSink {
    path: PathBuf,
    anchor: Option<PathBuf>,
    durability: Durability,
    rotate: Option<u64>,
    mirror: Option<Arc<dyn LineMirror>>,
    state: Mutex<State>,
    /// How far the log is known to be on disk: (file id, length). Syncs happen under this
    /// lock, never under `state`'s, so appenders keep writing while one of them syncs, and one
    /// sync covers every record written before it began.
    synced: Mutex<(u64, u64)>,
}

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlSink")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl JsonlSink {
    /// Opens (or creates) the log at `path` and writes a `start` record.
    pub fn open(path: impl Into<PathBuf>, options: JsonlOptions) -> Result<Self, AuditError> {
        let path = path.into();
        let (mut file, len, head) = open_log(&path)?;
        if let Some(a) = &options.anchor {
            check_anchor(&path, &mut file, len, a)?;
        }
        let mut state = State {
            file: Some(Arc::new(file)),
            file_id: 1,
            len,
            chain: Chain::new(head.unwrap_or_else(Head::genesis), options.checkpoints),
            unsynced: 0,
            closed: false,
            fresh: false,
        };
        let mut out = Vec::new();
        state.chain.push_start(&mut out, &timestamp());
        let sink = Self {
            path,
            anchor: options.anchor,
            durability: options.durability,
            rotate: options.rotate,
            mirror: options.mirror,
            state: Mutex::new(state),
            synced: Mutex::new((0, 0)),
        };
        {
            let mut st = sink.lock();
            sink.write_locked(&mut st, out, SyncWhen::Now)?;
            sink.save_anchor(&st);
        }
        Ok(sink)
    }

    /// Like [`JsonlSink::open`], but opens the file when the first record is written, so a
    /// destination that cannot be written yet (failure mode `continue`) is retried with each
    /// record instead of failing now.
    pub fn deferred(path: impl Into<PathBuf>, options: JsonlOptions) -> Self {
        Self {
            path: path.into(),
            anchor: options.anchor,
            durability: options.durability,
            rotate: options.rotate,
            mirror: options.mirror,
            state: Mutex::new(State {
                file: None,
                file_id: 0,
                len: 0,
                chain: Chain::new(Head::genesis(), options.checkpoints),
                unsynced: 0,
                closed: false,
                fresh: true,
            }),
            synced: Mutex::new((0, 0)),
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-advanced chain: the head is
        // only replaced after a complete write.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// Records where this writer has left the file (its last line's `seq` and hash, and the
    /// file's length), if it keeps an anchor. Written whole and renamed into place; a failure
    /// only leaves the previous anchor, which an honest log still holds.
    fn save_anchor(&self, st: &State) {
        let Some(anchor) = &self.anchor else { return };
        let Some(seq) = st.chain.head.next_seq.checked_sub(1) else {
            return;
        };
        let body = serde_json::json!({
            "log": self.path.to_string_lossy(),
            "seq": seq,
            "hash": st.chain.head.prev.to_string(),
            "len": st.len,
        });
        let tmp = anchor.with_extension("tmp");
        if std::fs::write(&tmp, format!("{body}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, anchor);
        }
    }

    /// Writes `out` (lines already encoded against `st.chain`), rolling the chain back if
    /// the write fails. Returns whether the durability setting asks for a sync now; with
    /// [`SyncWhen::Now`] it has been done.
    fn write_locked(
        &self,
        st: &mut State,
        out: Vec<u8>,
        sync: SyncWhen,
    ) -> Result<bool, AuditError> {
        let file = st
            .file
            .as_deref()
            .ok_or_else(|| AuditError::Closed(self.path.clone()))?;
        if let Err(e) = (&*file).write_all(&out) {
            // Cut off whatever part of the lines reached the file, then reopen next time.
            let _ = file.set_len(st.len);
            st.file = None;
            return Err(self.io("write", e));
        }
        st.len += out.len() as u64;
        st.unsynced += 1;
        if let Some(m) = &self.mirror {
            m.lines(&out);
        }
        let due = self.durability == Durability::Always || st.unsynced >= BATCH;
        if due {
            st.unsynced = 0;
            if sync == SyncWhen::Now
                && let Err(e) = file.sync_data()
            {
                st.file = None;
                return Err(self.io("sync", e));
            }
        }
        Ok(due)
    }

    /// Makes sure the log is on disk up to `end` of file `id` (which is `file`), syncing
    /// everything written to it so far unless a sync since has already covered `end`.
    fn sync_to(&self, file: &File, id: u64, end: u64) -> Result<(), AuditError> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= (id, end) {
            return Ok(());
        }
        let target = {
            let st = self.lock();
            if st.file_id == id { st.len } else { end }
        };
        match file.sync_data() {
            Ok(()) => {
                *synced = (id, target);
                Ok(())
            }
            Err(e) => {
                let mut st = self.lock();
                if st.file_id == id {
                    st.file = None;
                }
                Err(self.io("sync", e))
            }
        }
    }

    /// Makes `file` the log's open file, `len` bytes long.
    fn install(st: &mut State, file: File, len: u64) {
        st.file = Some(Arc::new(file));
        st.file_id += 1;
        st.len = len;
    }

    /// Reopens the log after a failure: it must be empty (the chain continues in it from a
    /// `start` record) or end with the last line this sink wrote.
    fn reopen(&self, st: &mut State) -> Result<(), AuditError> {
        let (mut file, len, head) = open_log(&self.path)?;
        if st.fresh {
            if let Some(a) = &self.anchor {
                check_anchor(&self.path, &mut file, len, a)?;
            }
            st.chain.head = head.unwrap_or_else(Head::genesis);
            Self::install(st, file, len);
            let mut out = Vec::new();
            st.chain.push_start(&mut out, &timestamp());
            self.write_locked(st, out, SyncWhen::Now)?;
            self.save_anchor(st);
            st.fresh = false;
            return Ok(());
        }
        match head {
            Some(h) if h.prev == st.chain.head.prev => {
                Self::install(st, file, len);
                Ok(())
            }
            Some(_) => Err(AuditError::Log {
                path: self.path.clone(),
                message: "the file now ends with a line this writer did not write; it will not be appended to".into(),
            }),
            None => {
                Self::install(st, file, len);
                let mut out = Vec::new();
                st.chain.push_start(&mut out, &timestamp());
                self.write_locked(st, out, SyncWhen::Now)?;
                self.save_anchor(st);
                Ok(())
            }
        }
    }

    /// Reopens the file if a failure closed it, leaving the chain as it was if that fails.
    fn ensure_open(&self, st: &mut State) -> Result<(), AuditError> {
        if st.file.is_some() {
            return Ok(());
        }
        let saved = st.chain.head;
        self.reopen(st).inspect_err(|_| st.chain.head = saved)
    }

    /// Rotates the file if it is due; returns whether it did (the old file was synced first).
    fn rotate_if_due(&self, st: &mut State) -> bool {
        let Some(limit) = self.rotate else {
            return false;
        };
        if st.len < limit {
            return false;
        }
        let mut out = Vec::new();
        st.chain.push_checkpoint(&mut out, &timestamp());
        let saved = st.chain.head;
        if !out.is_empty() && self.write_locked(st, out, SyncWhen::Now).is_err() {
            st.chain.head = saved;
            return false;
        }
        if let Some(f) = &st.file
            && f.sync_data().is_err()
        {
            return false;
        }
        let last = st.chain.head.next_seq.saturating_sub(1);
        let mut rotated = self.path.as_os_str().to_owned();
        rotated.push(format!(".{last:012}"));
        if std::fs::rename(&self.path, &rotated).is_ok() {
            // The next record opens a new, empty file and links it with a `start` record.
            st.file = None;
            st.len = 0;
            self.save_anchor(st);
            return true;
        }
        false
    }
}

impl AuditSink for JsonlSink {
    fn append(&self, entry: &Entry) -> Result<(), AuditError> {
        let (file, id, end) = {
            let mut st = self.lock();
            if st.closed {
                return Err(AuditError::Closed(self.path.clone()));
            }
            self.ensure_open(&mut st)?;
            let saved = st.chain.head;
            let mut out = Vec::with_capacity(512);
            match entry {
                Entry::Decision { ts, record } => st.chain.push_record(&mut out, ts, record),
                Entry::Gap { ts, gap } => st.chain.push_record(&mut out, ts, gap),
                Entry::Policy { ts, event } => st.chain.push_record(&mut out, ts, event),
            }
            let due = match self.write_locked(&mut st, out, SyncWhen::Later) {
                Ok(due) => due,
                Err(e) => {
                    st.chain.head = saved;
                    return Err(e);
                }
            };
            if due {
                self.save_anchor(&st);
            }
            let (id, end) = (st.file_id, st.len);
            let file = st.file.clone();
            // A rotation syncs the file it closes, so a record in it needs nothing more.
            if self.rotate_if_due(&mut st) || !due {
                return Ok(());
            }
            match file {
                Some(f) => (f, id, end),
                None => return Ok(()),
            }
        };
        // The record was written; its sync happens outside the lock, shared with every other
        // record written before it began.
        self.sync_to(&file, id, end)
    }

    fn close(&self) -> Result<(), AuditError> {
        let mut st = self.lock();
        if st.closed {
            return Ok(());
        }
        if st.fresh {
            // Nothing was ever written: leave no file behind.
            st.closed = true;
            return Ok(());
        }
        self.ensure_open(&mut st)?;
        let saved = st.chain.head;
        let mut out = Vec::new();
        st.chain.push_checkpoint(&mut out, &timestamp());
        if !out.is_empty()
            && let Err(e) = self.write_locked(&mut st, out, SyncWhen::Now)
        {
            st.chain.head = saved;
            return Err(e);
        }
        if let Some(f) = &st.file
            && let Err(e) = f.sync_data()
        {
            return Err(self.io("sync", e));
        }
        self.save_anchor(&st);
        st.closed = true;
        st.file = None;
        Ok(())
    }
}

impl Drop for JsonlSink {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Opens `path` for appending under an exclusive lock and reads where its chain ends
/// (`None` for an empty file).
fn open_log(path: &Path) -> Result<(File, u64, Option<Head>), AuditError> {
    let io = |op, source| AuditError::Io {
        path: path.to_owned(),
        op,
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| io("open", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(AuditError::Log {
                path: path.to_owned(),
                message: "another process is writing this log (it is locked)".into(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", e)),
    }
    let len = file.metadata().map_err(|e| io("stat", e))?.len();
    if len == 0 {
        return Ok((file, 0, None));
    }
    let from = len.saturating_sub(MAX_TAIL);
    file.seek(SeekFrom::Start(from))
        .map_err(|e| io("seek", e))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(|e| io("read", e))?;
    let broken = |message: String| AuditError::Log {
        path: path.to_owned(),
        message,
    };
    let Some(body) = tail.strip_suffix(b"\n") else {
        return Err(broken(format!(
            "the log ends in an incomplete line (at byte {len}); check it with `capgate audit verify` and move it aside"
        )));
    };
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if start == 0 && from > 0 {
        return Err(broken(format!(
            "its last line is longer than {MAX_TAIL} bytes; this is not a capgate audit log"
        )));
    }
    let last = &body[start..];
    let seq = serde_json::from_slice::<serde_json::Value>(last)
        .ok()
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
        .ok_or_else(|| {
            broken("its last line is not an audit record with a `seq`; this is not a capgate audit log, or it was damaged (check it with `capgate audit verify`)".into())
        })?;
    let log = identity(&mut file).map_err(|e| io("read", e))?;
    Ok((
        file,
        len,
        Some(Head {
            next_seq: seq + 1,
            prev: Sha256::of(last),
            since: 0,
            log,
            unsealed: false,
        }),
    ))
}

/// The identity of the log `file` holds: the hash of its first line if that is `seq` 0, or
/// the `log` its first (`start`) line names when the file continues another.
fn identity(file: &mut File) -> std::io::Result<Option<Sha256>> {
    use std::io::BufRead as _;
    file.seek(SeekFrom::Start(0))?;
    let mut first = Vec::new();
    std::io::BufReader::new(file.take(MAX_TAIL)).read_until(b'\n', &mut first)?;
    let Some(line) = first.strip_suffix(b"\n") else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
    Ok(match v.get("seq").and_then(serde_json::Value::as_u64) {
        Some(0) => Some(Sha256::of(line)),
        _ => v
            .get("log")
            .and_then(serde_json::Value::as_str)
            .and_then(|s| s.parse().ok()),
    })
}
