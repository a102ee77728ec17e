//! `capgate policy learn`: the narrowest policy the audit logs of a broad policy justify, and
//! the proof that it still allows every request the logs show allowed.

use std::path::{Path, PathBuf};

use capgate::audit::LineKind;
use capgate::learn::Learner;
use serde_json::json;

use super::exit::{CliError, Exit};
use super::run::Source;
use super::{Report, audit, safe};

/// Learns from `logs` what `src` (the broad policy) needs to allow, writes it to `out` (by
/// default beside the broad policy, as `NAME.learned.yaml`), and replays the logs under it.
pub(super) fn learn(
    logs: &[PathBuf],
    src: &Source<'_>,
    out: Option<&Path>,
) -> Result<Report, CliError> {
    let broad = super::run::load(src, false)?;
    let policy = broad.policy();
    let mut learner = Learner::new(&broad);
    for line in audit::stream(logs)? {
        let line = line.map_err(audit::broken)?;
        if let LineKind::Decision(r) = &line.kind {
            learner.add(r);
        }
    }
    let learned = learner.finish(logs);
    if learned.used == 0 {
        return Err(CliError::new(
            Exit::DataErr,
            format!(
                "the logs hold no allowed decision of `{}`'s components to learn from (hint: run the component under the broad policy with `audit: {{ level: all }}`; at `level: deny` only denials are kept)",
                policy.name
            ),
        ));
    }
    let out = match out {
        Some(o) => o.to_owned(),
        None => {
            let stem = src
                .policy
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "policy".into());
            src.policy.with_file_name(format!("{stem}.learned.yaml"))
        }
    };
    // The learned policy names its artifact, host directories and rules relative to the broad
    // policy's directory, so it must live there too.
    let same_dir = |p: &Path| {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::canonicalize(dir).ok()
    };
    if same_dir(&out).is_none() || same_dir(&out) != same_dir(src.policy) {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "`{}` is not in the broad policy's directory, which the learned policy's paths are relative to (hint: `--out {}`)",
                out.display(),
                src.policy
                    .with_file_name(format!(
                        "{}",
                        out.file_name()
                            .map_or("learned.yaml".into(), |n| n.to_string_lossy())
                    ))
                    .display()
            ),
        ));
    }
    write_new(&out, &learned.yaml)?;

    // The proof, decided under the learned policy: every request learned from is allowed,
    // and every denial the logs record for this policy stays denied (nothing is wider).
    let narrow = capgate::danger::load_unsigned_policy(&out)?;
    let authority = narrow.authority();
    let lost: Vec<String> = learned
        .evidence
        .iter()
        .filter(|(c, r)| !authority.decide_uncached(c, r).allowed)
        .map(|(c, r)| format!("{c} {} {}", r.action(), r.resource()))
        .collect();
    let (mut denials, mut opened) = (0u64, Vec::new());
    for line in audit::stream(logs)? {
        let line = line.map_err(audit::broken)?;
        let LineKind::Decision(r) = &line.kind else {
            continue;
        };
        // Denials an enforcement point made after the decision (the SSRF guard, a path that
        // changed) carry errors: they are not decisions a policy makes again.
        if r.policy.name != policy.name
            || !r.was_enforced()
            || r.decision != capgate::audit::Verdict::Deny
            || !r.errors.is_empty()
        {
            continue;
        }
        let Ok(request) = r.request() else { continue };
        denials += r.decisions();
        if authority.decide_uncached(&r.component, &request).allowed {
            opened.push(format!("{} {} {}", r.component, r.action, r.resource));
        }
    }
    let mut text = format!(
        "learned `{}` version {} from {} allowed decision(s) ({} other record(s) were not evidence{}{})\nwrote {}\nproof: the {} distinct request(s) learned from are {} allowed under the learned policy, and {} of the {denials} recorded denial(s) would be allowed",
        policy.name,
        policy.version + 1,
        learned.used,
        learned.skipped,
        if learned.not_allowed > 0 {
            format!(
                "; {} allowed record(s) were not learned from: the broad policy does not allow their request when it decides it again, or the SSRF guard refused it",
                learned.not_allowed
            )
        } else {
            String::new()
        },
        if learned.malformed > 0 {
            format!(
                "; {} allowed record(s) name no concrete request",
                learned.malformed
            )
        } else {
            String::new()
        },
        out.display(),
        learned.evidence.len(),
        if lost.is_empty() { "all" } else { "not all" },
        opened.len(),
    );
    if !lost.is_empty() || !opened.is_empty() {
        return Err(CliError::new(
            Exit::DataErr,
            format!(
                "{text}\n{}{}the learned policy is kept at `{}` for inspection, but is not what the logs justify",
                lost.iter()
                    .map(|l| format!("denied: {}\n", safe(l)))
                    .collect::<String>(),
                opened
                    .iter()
                    .map(|l| format!("allowed: {}\n", safe(l)))
                    .collect::<String>(),
                out.display()
            ),
        ));
    }
    text.push_str(&format!(
        "\nevery allowed decision learned from is still allowed, and nothing denied is; review `{}`, then sign it (`capgate sign policy {}`)",
        out.display(),
        out.display()
    ));
    Ok(Report::new(
        text,
        json!({"policy": out, "name": policy.name, "version": policy.version + 1,
               "learned_from": learned.used, "skipped": learned.skipped,
               "malformed": learned.malformed, "not_allowed": learned.not_allowed,
               "proof": {"learned_from": learned.evidence.len(), "lost": lost, "recorded_denials": denials, "opened": opened}}),
    ))
}

/// Writes `text` to a new file `path`; an existing file is never overwritten.
fn write_new(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
                " (hint: it is kept as it is; name another file with `--out`, or remove it)"
            } else {
                ""
            };
            CliError::new(
                Exit::CantCreate,
                format!("cannot create `{}`: {e}{hint}", path.display()),
            )
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| {
            CliError::new(
                Exit::IoErr,
                format!("cannot write `{}`: {e}", path.display()),
            )
        })
}
