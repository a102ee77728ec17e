//! Replaying a log: each recorded request decided again under another policy.

use std::path::PathBuf;

use super::read::{Broken, LineKind, LogLine};
use super::record::{DecisionRecord, Verdict};
use crate::VerifiedPolicy;
use crate::authz::Decision;

/// A recorded decision that another policy would decide differently.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Where the record is.
    pub file: PathBuf,
    /// Its line.
    pub line: u64,
    /// Its `seq`.
    pub seq: u64,
    /// The record.
    pub record: DecisionRecord,
    /// What the other policy decides.
    pub now: Decision,
}

impl Change {
    /// The recorded verdict.
    pub fn was(&self) -> Verdict {
        self.record.decision
    }
}

/// Decides each recorded request again under `policy` and returns those whose outcome
/// (allow or deny) changes. Records that cannot be rebuilt into a request are errors naming
/// their line.
pub fn replay(
    lines: impl IntoIterator<Item = Result<LogLine, Broken>>,
    policy: &VerifiedPolicy,
) -> Result<Vec<Change>, Broken> {
    let mut changes = Vec::new();
    for l in lines {
        let l = l?;
        let LineKind::Decision(record) = l.kind else {
            continue;
        };
        let request = record.request().map_err(|m| Broken {
            file: l.file.clone(),
            line: l.line,
            message: format!("the recorded request cannot be rebuilt: {m}"),
        })?;
        let mut now = policy
            .authority()
            .decide_uncached(&record.component, &request);
        // A report-only rule's record is compared with what the policy's report-only rules
        // would decide now (which is the enforced decision where they would change nothing).
        if !record.was_enforced()
            && let Some(would) = now.report.take()
        {
            now = *would;
        }
        if now.allowed != (record.decision == Verdict::Allow) {
            changes.push(Change {
                file: l.file,
                line: l.line,
                seq: l.seq,
                record: *record,
                now,
            });
        }
    }
    Ok(changes)
}
