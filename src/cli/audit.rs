//! `capgate audit`: verify, query, summarise and replay audit logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capgate::audit::{self, Broken, LineKind, LogLine, LogReader, Verdict};
use capgate::signing::TrustRoot;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{CliError, Exit, Report};

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Check a log's hash chain and its checkpoints' signatures; name the first bad line.
    Verify {
        #[command(flatten)]
        logs: Logs,
        /// The trust root whose `audit` role signs checkpoints; without it, only the chain is
        /// checked.
        #[arg(long, value_name = "TRUST.yaml")]
        trust: Option<PathBuf>,
        /// The log is still being written: records after the last checkpoint are a warning,
        /// not an error.
        #[arg(long)]
        live: bool,
        /// The state directory of the host that writes the log (default: the CLI's state
        /// directory): the log must still end with the line that host wrote last (it was
        /// not cut off, extended or rewritten since).
        #[arg(long, value_name = "DIR", env = "CAPGATE_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// List decision records, filtered.
    Query {
        #[command(flatten)]
        logs: Logs,
        #[command(flatten)]
        filter: Filter,
        /// How records are listed: `table` (aligned columns) or `json` (one object per
        /// record). [default: `json` under `--log-format json`, else `table`]
        #[arg(
            long,
            value_enum,
            hide_possible_values = true,
            value_name = "table|json"
        )]
        format: Option<Format>,
    },
    /// Count decisions per component, action and decision; list the most denied resources.
    Summary {
        #[command(flatten)]
        logs: Logs,
        #[command(flatten)]
        filter: Filter,
        /// How many of the most denied resources to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Decide every recorded request again under another policy; list what would change.
    Replay {
        #[command(flatten)]
        logs: Logs,
        /// The proposed policy (YAML).
        #[arg(long, value_name = "POLICY.yaml")]
        policy: PathBuf,
        /// The trust root the proposed policy is verified against.
        #[arg(long, value_name = "TRUST.yaml")]
        trust: Option<PathBuf>,
        /// Do not check the proposed policy's signatures (a draft not yet signed).
        #[arg(long)]
        allow_unsigned: bool,
        /// Where accepted policy versions are remembered (read only here).
        #[arg(long, value_name = "DIR", env = "CAPGATE_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub(super) struct Logs {
    /// The log file(s); rotated files may be given in any order.
    #[arg(required = true, value_name = "LOG")]
    logs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct Filter {
    /// Only this component (repeatable).
    #[arg(long, value_name = "NAME")]
    component: Vec<String>,
    /// Only this action, e.g. `http.request` (repeatable).
    #[arg(long, value_name = "ACTION")]
    action: Vec<String>,
    /// Only allows or only denials.
    #[arg(long, value_enum)]
    decision: Option<DecisionArg>,
    /// Only records at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<time::OffsetDateTime>,
    /// Only records before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<time::OffsetDateTime>,
}

fn parse_time(s: &str) -> Result<time::OffsetDateTime, String> {
    audit::parse_ts(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DecisionArg {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Format {
    /// Aligned columns.
    Table,
    /// One JSON object per record.
    Json,
}

impl Filter {
    fn keeps(&self, l: &LogLine, r: &audit::DecisionRecord) -> bool {
        let ts = audit::parse_ts(&l.ts).ok();
        (self.component.is_empty() || self.component.contains(&r.component))
            && (self.action.is_empty() || self.action.contains(&r.action))
            && self
                .decision
                .is_none_or(|d| (d == DecisionArg::Allow) == (r.decision == Verdict::Allow))
            && self.since.is_none_or(|s| ts.is_some_and(|t| t >= s))
            && self.until.is_none_or(|u| ts.is_some_and(|t| t < u))
    }
}

pub(super) fn run(command: AuditCommand, log_format: super::LogFormat) -> Result<Report, CliError> {
    match command {
        AuditCommand::Verify {
            logs,
            trust,
            live,
            state_dir,
        } => verify(&logs.logs, trust.as_deref(), live, state_dir.as_deref()),
        AuditCommand::Query {
            logs,
            filter,
            format,
        } => {
            let format = format.unwrap_or(match log_format {
                super::LogFormat::Json => Format::Json,
                super::LogFormat::Text => Format::Table,
            });
            query(&logs.logs, &filter, format)
        }
        AuditCommand::Summary { logs, filter, top } => summary(&logs.logs, &filter, top),
        AuditCommand::Replay {
            logs,
            policy,
            trust,
            allow_unsigned,
            state_dir,
        } => {
            if trust.is_none() && !allow_unsigned {
                return Err(CliError::new(
                    Exit::Usage,
                    "`--trust TRUST.yaml` is required to verify the proposed policy (hint: `--allow-unsigned` replays an unsigned draft)",
                ));
            }
            let src = super::run::Source {
                policy: &policy,
                trust: trust.as_deref(),
                state_dir: state_dir.as_deref(),
                allow_unsigned: trust.is_none(),
                audit: None,
                audit_key: None,
                audit_otlp: None,
                audit_otlp_ca: None,
                policy_name: None,
            };
            replay(&logs.logs, &src)
        }
    }
}

fn exists(logs: &[PathBuf]) -> Result<(), CliError> {
    for l in logs {
        if !l.exists() {
            return Err(CliError::new(
                Exit::NoInput,
                format!("{}: no such file", l.display()),
            ));
        }
    }
    Ok(())
}

pub(super) fn broken(b: Broken) -> CliError {
    CliError::new(Exit::NoPerm, format!("audit log refused: {b}"))
}

/// Every line of the logs in chain order (rotated files sorted by their first `seq`), read
/// as it is used: memory stays bounded however large the logs are.
pub(super) fn stream(
    logs: &[PathBuf],
) -> Result<impl Iterator<Item = Result<LogLine, Broken>>, CliError> {
    exists(logs)?;
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    for f in logs {
        let first = open(f)?
            .next()
            .transpose()
            .map_err(broken)?
            .ok_or_else(|| {
                broken(Broken {
                    file: f.clone(),
                    line: 0,
                    message: "the file is empty; an audit log starts with a `start` record".into(),
                })
            })?;
        files.push((first.seq, f.clone()));
    }
    files.sort();
    let readers = files
        .into_iter()
        .map(|(_, f)| open(&f))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(readers.into_iter().flatten())
}

fn open(f: &Path) -> Result<LogReader, CliError> {
    LogReader::open(f)
        .map_err(|e| CliError::new(Exit::IoErr, format!("cannot read `{}`: {e}", f.display())))
}

fn verify(
    logs: &[PathBuf],
    trust: Option<&Path>,
    live: bool,
    state_dir: Option<&Path>,
) -> Result<Report, CliError> {
    exists(logs)?;
    let trust = trust.map(TrustRoot::load).transpose()?;
    let default = capgate::signing::StateStore::default_dir();
    let anchored = match state_dir.or(default.as_deref()) {
        Some(dir) => check_anchors(logs, dir)?,
        None => Vec::new(),
    };
    let v = audit::verify(logs, trust.as_ref(), live).map_err(broken)?;
    for w in &v.warnings {
        eprintln!("warning: {w}");
    }
    let (first, last) = v.seqs.unwrap_or_default();
    // A log still being written may end with records its next checkpoint will cover: with
    // `--live`, a log whose writer declared a key, with a valid checkpoint, and no more than a
    // checkpoint's worth of records after it. Anything else is not proven.
    if let audit::Proof::Unproven {
        through,
        why,
        declared,
        every,
        last,
    } = &v.proof
        && !(live
            && *declared
            && through.is_some_and(|t| last.saturating_sub(t) <= every.saturating_add(2)))
    {
        let proven = match through {
            Some(t) => format!(
                "records seq {first}..={t} are proven by checkpoints; seq {}..={last} are not",
                t + 1
            ),
            None => format!("no record of seq {first}..={last} is proven by a checkpoint"),
        };
        return Err(CliError::new(
            Exit::Unproven,
            format!("audit log not proven: {proven}: {why}"),
        ));
    }
    let proof = match &v.proof {
        audit::Proof::Proven => "proven",
        audit::Proof::Unproven { .. } => "unproven-live",
        audit::Proof::Unchecked => "unchecked",
        _ => "chain-only",
    };
    let mut text = format!(
        "ok: {} records intact (seq {first}..={last}): {} decisions",
        v.records, v.decisions
    );
    if v.gaps > 0 {
        text.push_str(&format!(
            ", {} gap(s) where {} records were lost",
            v.gaps, v.missed
        ));
    }
    if v.checkpoints > 0 {
        text.push_str(&format!(
            "; {} checkpoint(s) signed by {}{}",
            v.checkpoints,
            v.signers.iter().cloned().collect::<Vec<_>>().join(", "),
            if v.sealed {
                ", the last at the end of the log"
            } else {
                ""
            }
        ));
    }
    text.push_str(match &v.proof {
        audit::Proof::Proven => "; every record is proven by a checkpoint",
        audit::Proof::Unproven { .. } => {
            "; records after the last checkpoint are not proven yet (live)"
        }
        audit::Proof::Unchecked => "; checkpoints not checked (no `--trust`)",
        _ => "; chain only (not tamper-evident)",
    });
    for (file, seq) in &anchored {
        text.push_str(&format!(
            "; `{}` still holds seq {seq}, where its writer left it",
            file.display()
        ));
    }
    Ok(Report::new(
        text,
        json!({"ok": true, "records": v.records, "decisions": v.decisions, "gaps": v.gaps, "missed": v.missed,
               "checkpoints": v.checkpoints, "signers": v.signers, "first_seq": first, "last_seq": last,
               "sealed": v.sealed, "proof": proof, "warnings": v.warnings}),
    ))
}

/// Checks each log file against the anchor its writer keeps in `state_dir`: the seq it holds
/// there, for each file that has one. A file that no longer holds its anchored line is
/// refused (77).
fn check_anchors(logs: &[PathBuf], state_dir: &Path) -> Result<Vec<(PathBuf, u64)>, CliError> {
    let mut out = Vec::new();
    for log in logs {
        let anchor = audit::anchor_path(state_dir, log);
        if !anchor.exists() {
            continue;
        }
        let mut file = std::fs::File::open(log).map_err(|e| {
            CliError::new(Exit::IoErr, format!("cannot read `{}`: {e}", log.display()))
        })?;
        let len = file
            .metadata()
            .map_err(|e| {
                CliError::new(Exit::IoErr, format!("cannot read `{}`: {e}", log.display()))
            })?
            .len();
        audit::check_anchor(log, &mut file, len, &anchor)
            .map_err(|e| CliError::new(Exit::NoPerm, format!("audit log refused: {e}")))?;
        let seq = std::fs::read_to_string(&anchor)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
            .unwrap_or_default();
        out.push((log.clone(), seq));
    }
    if out.is_empty() {
        eprintln!(
            "warning: `{}` has no anchor for {}: whether the log was cut off cannot be checked against its writer",
            state_dir.display(),
            if logs.len() == 1 {
                "this log"
            } else {
                "these logs"
            }
        );
    }
    Ok(out)
}

/// The decision records `filter` keeps, with their lines, as the logs are read.
fn decisions<'a>(
    lines: impl Iterator<Item = Result<LogLine, Broken>> + 'a,
    filter: &'a Filter,
) -> impl Iterator<Item = Result<(LogLine, audit::DecisionRecord), CliError>> + 'a {
    lines.filter_map(move |l| match l {
        Err(b) => Some(Err(broken(b))),
        Ok(mut l) => match std::mem::replace(
            &mut l.kind,
            LineKind::Start {
                checkpoints: None,
                log: None,
                every: None,
            },
        ) {
            LineKind::Decision(r) if filter.keeps(&l, &r) => Some(Ok((l, *r))),
            _ => None,
        },
    })
}

fn query(logs: &[PathBuf], filter: &Filter, format: Format) -> Result<Report, CliError> {
    // Only the matching records are held (a table needs its widths).
    let rows = decisions(stream(logs)?, filter).collect::<Result<Vec<_>, _>>()?;
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|(l, r)| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("seq".into(), l.seq.into());
                o.insert("ts".into(), l.ts.clone().into());
            }
            v
        })
        .collect();
    let text = match format {
        Format::Json => json_rows
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        Format::Table => {
            let mut table = vec![[
                "SEQ".to_owned(),
                "TIME".to_owned(),
                "COMPONENT".to_owned(),
                "ACTION".to_owned(),
                "DECISION".to_owned(),
                "RESOURCE".to_owned(),
                "BY".to_owned(),
            ]];
            for (l, r) in &rows {
                let by = if r.errors.is_empty() {
                    r.reasons.join(",")
                } else {
                    r.errors.join("; ")
                };
                table.push([
                    l.seq.to_string(),
                    l.ts.clone(),
                    r.component.clone(),
                    r.action.clone(),
                    match (r.count, r.was_enforced()) {
                        (Some(n), true) => format!("{} ×{n}", r.decision),
                        (None, true) => r.decision.to_string(),
                        (Some(n), false) => format!("{} (report-only) ×{n}", r.decision),
                        (None, false) => format!("{} (report-only)", r.decision),
                    },
                    r.resource.clone(),
                    if by.is_empty() {
                        "(no grant)".into()
                    } else {
                        by
                    },
                ]);
            }
            render(&table)
        }
    };
    Ok(Report::new(
        if rows.is_empty() {
            "(no matching records)".into()
        } else {
            text
        },
        json!({"records": json_rows}),
    ))
}

/// A table, every cell made [`safe`](super::safe) to show: cells hold strings guests chose.
fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|r| r.clone().map(|c| super::safe(&c).into_owned()))
        .collect();
    let mut widths = [0usize; N];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i + 1 == N {
                        c.clone()
                    } else {
                        format!("{c:<w$}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn summary(logs: &[PathBuf], filter: &Filter, top: usize) -> Result<Report, CliError> {
    let mut counts: BTreeMap<(String, String, Verdict), u64> = BTreeMap::new();
    let mut denied: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    // Would-be denials of report-only rules, by component, action, resource and rules.
    let mut reported: BTreeMap<(String, String, String, String), u64> = BTreeMap::new();
    let mut total = 0u64;
    let gaps = std::cell::Cell::new(0u64);
    let lines = stream(logs)?.inspect(|l| {
        if let Ok(LogLine {
            kind: LineKind::Gap(g),
            ..
        }) = l
        {
            gaps.set(gaps.get() + g.missed);
        }
    });
    for row in decisions(lines, filter) {
        let (_, r) = row?;
        let n = r.decisions();
        if !r.was_enforced() {
            if r.decision == Verdict::Deny {
                let by = if r.errors.is_empty() {
                    r.reasons.join(",")
                } else {
                    r.errors.join("; ")
                };
                *reported
                    .entry((
                        r.component.clone(),
                        r.action.clone(),
                        r.resource.clone(),
                        by,
                    ))
                    .or_default() += n;
            }
            continue;
        }
        total += n;
        *counts
            .entry((r.component.clone(), r.action.clone(), r.decision))
            .or_default() += n;
        if r.decision == Verdict::Deny {
            *denied
                .entry((r.component.clone(), r.action.clone(), r.resource.clone()))
                .or_default() += n;
        }
    }
    let mut top_denied: Vec<_> = denied.into_iter().collect();
    top_denied.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top_denied.truncate(top);
    let gaps = gaps.get();

    let mut table = vec![[
        "COMPONENT".to_owned(),
        "ACTION".to_owned(),
        "DECISION".to_owned(),
        "COUNT".to_owned(),
    ]];
    for ((c, a, d), n) in &counts {
        table.push([c.clone(), a.clone(), d.to_string(), n.to_string()]);
    }
    let mut text = format!("{total} decisions\n{}", render(&table));
    if !top_denied.is_empty() {
        let mut t = vec![[
            "COUNT".to_owned(),
            "COMPONENT".to_owned(),
            "ACTION".to_owned(),
            "RESOURCE".to_owned(),
        ]];
        for ((c, a, r), n) in &top_denied {
            t.push([n.to_string(), c.clone(), a.clone(), r.clone()]);
        }
        text.push_str(&format!("\n\nmost denied\n{}", render(&t)));
    }
    if !reported.is_empty() {
        let mut t = vec![[
            "COUNT".to_owned(),
            "COMPONENT".to_owned(),
            "ACTION".to_owned(),
            "RESOURCE".to_owned(),
            "RULES".to_owned(),
        ]];
        let mut rows: Vec<_> = reported.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for ((c, a, r, by), n) in rows {
            t.push([n.to_string(), c.clone(), a.clone(), r.clone(), by.clone()]);
        }
        text.push_str(&format!(
            "\n\nreport-only rules would have denied (not enforced)\n{}",
            render(&t)
        ));
    }
    if gaps > 0 {
        text.push_str(&format!(
            "\n\nwarning: the log records {gaps} lost record(s) (gap records)"
        ));
    }
    Ok(Report::new(
        text,
        json!({
            "decisions": total,
            "counts": counts.iter().map(|((c, a, d), n)| json!({"component": c, "action": a, "decision": d, "count": n})).collect::<Vec<_>>(),
            "top_denied": top_denied.iter().map(|((c, a, r), n)| json!({"component": c, "action": a, "resource": r, "count": n})).collect::<Vec<_>>(),
            "report_only_denied": reported.iter().map(|((c, a, r, by), n)| json!({"component": c, "action": a, "resource": r, "rules": by, "count": n})).collect::<Vec<_>>(),
            "missed": gaps,
        }),
    ))
}

pub(super) fn replay(logs: &[PathBuf], src: &super::run::Source<'_>) -> Result<Report, CliError> {
    let policy = super::run::load(src, false)?;
    let name = &policy.policy().name;
    let (records, others) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    let reports = std::cell::Cell::new(0u64);
    let lines = stream(logs)?.inspect(|l| {
        if let Ok(LogLine {
            kind: LineKind::Decision(r),
            ..
        }) = l
        {
            if r.was_enforced() {
                records.set(records.get() + r.decisions());
            } else {
                reports.set(reports.get() + r.decisions());
            }
            if &r.policy.name != name {
                others.set(others.get() + 1);
            }
        }
    });
    let changes = audit::replay(lines, &policy).map_err(broken)?;
    let (decisions, other) = (records.get(), others.get());
    if other > 0 {
        eprintln!(
            "warning: {other} record(s) were made under a policy not named `{name}`; they are replayed all the same"
        );
    }
    let tightened = changes.iter().filter(|c| c.was() == Verdict::Allow).count();
    let mut text = format!(
        "replayed {decisions} decisions{} under `{name}` version {}: {} would change ({tightened} allow → deny, {} deny → allow)",
        match reports.get() {
            0 => String::new(),
            n => format!(" and {n} report-only record(s)"),
        },
        policy.policy().version,
        changes.len(),
        changes.len() - tightened
    );
    for c in &changes {
        let was = if c.record.reasons.is_empty() && c.record.errors.is_empty() {
            "no grant".to_owned()
        } else if c.record.errors.is_empty() {
            c.record.reasons.join(", ")
        } else {
            c.record.errors.join("; ")
        };
        let line = format!(
            "{}:{} seq {}{}: {} {} {}: {} → {} ({}; was: {was})",
            c.file.display(),
            c.line,
            c.seq,
            if c.record.was_enforced() {
                ""
            } else {
                " (report-only)"
            },
            c.record.component,
            c.record.action,
            c.record.resource,
            c.was(),
            if c.now.allowed { "allow" } else { "deny" },
            c.now.explain()
        );
        text.push('\n');
        text.push_str(&super::safe(&line));
    }
    let json_changes: Vec<serde_json::Value> = changes
        .iter()
        .map(|c| {
            json!({"file": c.file, "line": c.line, "seq": c.seq, "component": c.record.component,
                   "action": c.record.action, "resource": c.record.resource, "was": c.was(),
                   "was_reasons": c.record.reasons, "now": if c.now.allowed { "allow" } else { "deny" },
                   "now_reasons": c.now.reasons, "now_errors": c.now.errors})
        })
        .collect();
    Ok(Report::new(
        text,
        json!({"decisions": decisions, "changes": json_changes}),
    ))
}
