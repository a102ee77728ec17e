//! `capgate policy learn`: the narrowest policy the audit logs of a broad policy justify, and
//! the proof that it still allows every request the logs show allowed.

use std::path::{Path, PathBuf};

use capgate::audit::LineKind;
use capgate::learn::Learner;
use serde_json::json;

use super::exit::{CliError, Exit};
use super::run::Source;
use super::{Report, audit};

/// Learns from `logs` what `src` (the broad policy) needs to allow, writes it to `out` (by
/// default beside the broad policy, as `NAME.learned.yaml`), and replays the logs under it.
pub(super) fn learn(
    logs: &[PathBuf],
    src: &Source<'_>,
    out: Option<&Path>,
) -> Result<Report, CliError> {
    let broad = super::run::load(src, false)?;
    let policy = broad.policy();
    let mut learner = Learner::new(policy);
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

    // The proof: every allowed decision in the logs is still allowed under the learned policy.
    let replay_src = Source {
        policy: &out,
        trust: None,
        state_dir: None,
        allow_unsigned: true,
        audit: None,
        audit_key: None,
    };
    let proof = audit::replay(logs, &replay_src)?;
    let tightened = proof.json["changes"]
        .as_array()
        .map_or(0, |c| c.iter().filter(|c| c["was"] == "allow").count());
    let mut text = format!(
        "learned `{}` version {} from {} allowed decision(s) ({} other record(s) were not evidence){}\nwrote {}\nproof: {}",
        policy.name,
        policy.version + 1,
        learned.used,
        learned.skipped,
        if learned.malformed > 0 {
            format!(
                "; {} allowed record(s) could not be read and were not learned from",
                learned.malformed
            )
        } else {
            String::new()
        },
        out.display(),
        proof.text
    );
    if tightened > 0 {
        return Err(CliError::new(
            Exit::DataErr,
            format!(
                "{text}\nthe learned policy would deny {tightened} decision(s) the logs show allowed; it is kept at `{}` for inspection, but is not what the logs justify",
                out.display()
            ),
        ));
    }
    text.push_str(&format!(
        "\nevery allowed decision in the logs is still allowed; review `{}`, then sign it (`capgate sign policy {}`)",
        out.display(),
        out.display()
    ));
    Ok(Report::new(
        text,
        json!({"policy": out, "name": policy.name, "version": policy.version + 1,
               "learned_from": learned.used, "skipped": learned.skipped,
               "malformed": learned.malformed, "replay": proof.json}),
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
