//! Anchors: where a writer left each log (its last `seq`, hash and length), kept in the
//! writer's state directory, so a log cut off or rewritten since is refused.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use super::file::MAX_TAIL;
use super::{AuditError, Sha256};

/// Where a writer keeping its anchors in `state_dir` keeps the one of the log at `log`: one
/// file per log, named by the hash of the log's absolute path.
pub fn anchor_path(state_dir: &Path, log: &Path) -> PathBuf {
    // The directory resolved (symlinks, `..`), so every spelling of the path finds the anchor.
    let absolute = match (log.parent(), log.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir)
                .map(|d| d.join(name))
                .unwrap_or_else(|_| std::path::absolute(log).unwrap_or_else(|_| log.to_owned()))
        }
        _ => std::path::absolute(log).unwrap_or_else(|_| log.to_owned()),
    };
    let name = Sha256::of(absolute.to_string_lossy().as_bytes()).to_string();
    state_dir.join(format!("audit-anchor-{}.json", &name[..32]))
}

/// Checks that the log in `file` (`len` bytes) still holds the line the anchor at `anchor`
/// names, where it names it. An existing log without an anchor is refused: this writer
/// continues only logs it left.
pub fn check_anchor(
    path: &Path,
    file: &mut File,
    len: u64,
    anchor: &Path,
) -> Result<(), AuditError> {
    let refuse = |message: String| AuditError::Log {
        path: path.to_owned(),
        message,
    };
    let text = match std::fs::read_to_string(anchor) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match len {
                0 => Ok(()),
                _ => Err(refuse(format!(
                    "this host has no record of writing this log (no anchor `{}`), so it will not continue it; check it with `capgate audit verify` and move it aside",
                    anchor.display()
                ))),
            };
        }
        Err(e) => {
            return Err(refuse(format!(
                "cannot read its anchor `{}`: {e}",
                anchor.display()
            )));
        }
    };
    let a: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let (Some(seq), Some(hash), Some(at)) = (
        a.get("seq").and_then(serde_json::Value::as_u64),
        a.get("hash").and_then(serde_json::Value::as_str),
        a.get("len").and_then(serde_json::Value::as_u64),
    ) else {
        return Err(refuse(format!(
            "its anchor `{}` is not readable",
            anchor.display()
        )));
    };
    if at > len {
        return Err(refuse(format!(
            "the log is shorter than this host left it: it wrote {at} bytes, through seq {seq}, and the file has {len}: it was truncated (check it with `capgate audit verify --state-dir`)"
        )));
    }
    if at < len {
        return Err(refuse(format!(
            "the log goes on past where this host last left it (seq {seq}, byte {at}; the file has {len} bytes): lines were appended by someone else, or this host stopped without closing the log (a crash) after writing them; check it with `capgate audit verify`, then move it aside"
        )));
    }
    if at == 0 {
        // Left empty: a rotation renamed the file away, and the next one starts afresh.
        return Ok(());
    }
    let from = at.saturating_sub(MAX_TAIL);
    let io = |op, source| AuditError::Io {
        path: path.to_owned(),
        op,
        source,
    };
    file.seek(SeekFrom::Start(from))
        .map_err(|e| io("seek", e))?;
    let mut tail = vec![0; (at - from) as usize];
    file.read_exact(&mut tail).map_err(|e| io("read", e))?;
    let found = tail
        .strip_suffix(b"\n")
        .map(|body| &body[body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)..]);
    let held = found.is_some_and(|line| {
        Sha256::of(line).to_string() == hash
            && serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
                == Some(seq)
    });
    if !held {
        return Err(refuse(format!(
            "the log no longer holds the line this host wrote last (seq {seq}, at byte {at}): it was truncated or rewritten (check it with `capgate audit verify --state-dir`)"
        )));
    }
    Ok(())
}
