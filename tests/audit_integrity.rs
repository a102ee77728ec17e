//! The audit log against whoever can edit the file but holds no key: a re-chained log, a log
//! cut off and continued, a checkpoint carried over from another log, text that forges rows,
//! and floods. Each attack fails, and each has a control.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use capgate::signing::{SecretKey, Sha256, SignatureEntry};
use common::{Run, Sandbox, signed_probe_policy};
use serde_json::Value;

const TRUST: &str = "capgate-trust: 1\nkeys: { release: keys/release.pub, alice: keys/alice.pub, auditor: keys/auditor.pub }\nroles:\n  artifact: { keys: [release], threshold: 1 }\n  policy: { keys: [alice], threshold: 1 }\n  audit: { keys: [auditor], threshold: 1 }\n";

/// A probe with a read-only `/data`, its denials audited to `audit.jsonl` (checkpoints by
/// the `auditor` key, which the trust root's `audit` role holds).
fn fixture() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("data/ok.txt", "fine");
    sb.write("data/secret.txt", "secret");
    sb.write(
        "rules.cedar",
        "@id(\"no-secret\")\nforbid (principal, action == Action::\"fs.read\", resource) when { resource.path == \"/data/secret.txt\" };\n",
    );
    signed_probe_policy(
        &sb,
        "capgate: 1\nname: audited\nversion: 1\nrules: [rules.cedar]\naudit: { level: deny, log: audit.jsonl }\ncomponents:\n  probe:\n    component: probe.wasm\n    files: [{ host: data, guest: /data }]\n",
    );
    sb.keys(&["auditor"]);
    sb.write("trust.yaml", TRUST);
    sb
}

fn run(sb: &Sandbox, args: &[&str]) -> Run {
    common::run_audited(sb, "probe", args)
}

/// `capgate audit verify` of the log with the trust root, and without the writer's state
/// directory unless `extra` names it (so the checks of the log itself are what is tested).
fn verify(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut argv = vec!["audit", "verify", "audit.jsonl", "--trust", "trust.yaml"];
    argv.extend_from_slice(extra);
    let mut cmd = sb.command(argv);
    cmd.env_remove("CAPGATE_STATE_DIR");
    Run::from_output(cmd.output().unwrap())
}

fn lines(sb: &Sandbox) -> Vec<Value> {
    std::fs::read_to_string(sb.path("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes `records` as a log, each `seq` and `prev` recomputed: what an attacker without the
/// key can always do.
fn rechain(sb: &Sandbox, records: &[Value]) {
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for (seq, r) in records.iter().enumerate() {
        let mut r = r.clone();
        let o = r.as_object_mut().unwrap();
        o.insert("seq".into(), (seq as u64).into());
        o.insert("prev".into(), prev.clone().into());
        let line = r.to_string();
        prev = Sha256::of(line.as_bytes()).to_string();
        out.push_str(&line);
        out.push('\n');
    }
    std::fs::write(sb.path("audit.jsonl"), out).unwrap();
}

#[test]
fn a_rechained_log_without_its_checkpoints_is_not_reported_intact() {
    let sb = fixture();
    for path in ["/data/ok.txt", "/data/a", "/data/b", "/data/c"] {
        run(&sb, &["write", path, "x"]).expect(0);
    }
    // Control: the log as written is proven, every record of it.
    verify(&sb, &[])
        .expect(0)
        .stdout_has("every record is proven by a checkpoint");

    // The attack: drop the checkpoints and the key and log identity of the `start` records,
    // delete one denial, rewrite another, and recompute `seq` and `prev`.
    let mut records: Vec<Value> = lines(&sb)
        .into_iter()
        .filter(|r| r["type"] != "checkpoint")
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.remove("checkpoints");
            o.remove("log");
            r
        })
        .collect();
    let denials: Vec<usize> = (0..records.len())
        .filter(|&i| records[i]["decision"] == "deny")
        .collect();
    records[denials[1]]["resource"] = "/data/innocent".into();
    records.remove(denials[0]);
    rechain(&sb, &records);

    let r = verify(&sb, &[]);
    r.expect(79).stderr_has("not proven").stderr_has(
        "the log has no checkpoint, although the trust root's `audit` role says who signs",
    );
    assert!(!r.stdout.contains("ok:"), "{}", r.stdout);
    // Not for a log still being written either: its writer declared no key.
    verify(&sb, &["--live"]).expect(79).stderr_has("not proven");

    // Without a trust root that expects checkpoints, the same log is intact as a chain, and
    // says it is no more than that.
    let mut cmd = sb.command(["audit", "verify", "audit.jsonl"]);
    cmd.env_remove("CAPGATE_STATE_DIR");
    Run::from_output(cmd.output().unwrap())
        .expect(0)
        .stdout_has("chain only (not tamper-evident)");
}

#[test]
fn a_log_cut_off_and_continued_is_refused_by_the_writer_and_by_verify() {
    let sb = fixture();
    run(&sb, &["write", "/data/a", "x"]).expect(0);
    run(&sb, &["write", "/data/b", "x"]).expect(0);
    // Control: an untouched log is continued by the next run, and matches its anchor.
    run(&sb, &["write", "/data/c", "x"]).expect(0);
    verify(&sb, &["--state-dir", "state"])
        .expect(0)
        .stdout_has("where its writer left it");

    // The attack: keep the first four lines (the first run's start, denial and checkpoint,
    // and the second run's start), then do an ordinary run.
    let text = std::fs::read_to_string(sb.path("audit.jsonl")).unwrap();
    let kept: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(sb.path("audit.jsonl"), kept).unwrap();
    run(&sb, &["write", "/data/d", "x"])
        .expect(73)
        .stderr_has("the log is shorter than this host left it")
        .stderr_has("it was truncated");
    assert_eq!(
        std::fs::read_to_string(sb.path("audit.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4,
        "nothing was appended to the cut-off log"
    );
    verify(&sb, &["--state-dir", "state"])
        .expect(77)
        .stderr_has("it was truncated");
}

#[test]
fn a_run_that_made_no_decision_ends_in_a_checkpoint_and_verifies() {
    let sb = fixture();
    run(&sb, &["exit", "0"]).expect(0);
    let records = lines(&sb);
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0]["type"], "start");
    assert_eq!(records[1]["type"], "checkpoint");
    verify(&sb, &[])
        .expect(0)
        .stdout_has("every record is proven by a checkpoint");
}

#[test]
fn a_checkpoint_signed_for_another_log_is_refused() {
    let sb = fixture();
    run(&sb, &["write", "/data/a", "x"]).expect(0);
    let records = lines(&sb);
    let last = records.len() - 1;
    assert_eq!(records[last]["type"], "checkpoint");
    // The checkpoint as the auditor would sign it for another log (another first line), at
    // the same place with the same head: it does not fit this log.
    let auditor = SecretKey::load(&sb.path("keys/auditor.key")).unwrap();
    let head: Sha256 = records[last]["prev"].as_str().unwrap().parse().unwrap();
    let sign_for = |log: &Sha256| {
        let message = capgate::audit::checkpoint_message(
            log,
            records[last]["seq"].as_u64().unwrap(),
            records[last]["ts"].as_str().unwrap(),
            &head,
        );
        serde_json::to_value([SignatureEntry::sign(&auditor, &message)]).unwrap()
    };
    let text = std::fs::read_to_string(sb.path("audit.jsonl")).unwrap();
    let first = text.lines().next().unwrap();
    let write_with = |sigs: Value| {
        let mut cp = records[last].clone();
        cp["signatures"] = sigs;
        let mut out: Vec<String> = text.lines().take(last).map(str::to_owned).collect();
        out.push(cp.to_string());
        std::fs::write(sb.path("audit.jsonl"), out.join("\n") + "\n").unwrap();
    };
    write_with(sign_for(&Sha256::of(b"another log's first line")));
    verify(&sb, &[])
        .expect(77)
        .stderr_has("the checkpoint's signature is not valid");
    // Control: the same signature made for this log's identity verifies.
    write_with(sign_for(&Sha256::of(first.as_bytes())));
    verify(&sb, &[])
        .expect(0)
        .stdout_has("every record is proven by a checkpoint");
}

#[test]
fn text_a_guest_chose_cannot_forge_rows_or_escape_sequences() {
    let sb = fixture();
    // A write to the read-only mount: denied, and recorded with the guest's path.
    let forged = "/data/x\n9 2026-11-29T00:00:00Z probe fs.write allow /data/ok.txt \u{1b}[32mOK";
    let r = run(&sb, &["write", forged, "x"]);
    r.expect(0);
    assert!(!r.stderr.contains('\u{1b}'), "stderr: {}", r.stderr);
    r.stderr_has("/data/x\\n9 2026-11-29T00:00:00Z");
    let q = sb.capgate(["audit", "query", "audit.jsonl"]);
    q.expect(0);
    assert!(!q.stdout.contains('\u{1b}'), "{}", q.stdout);
    assert!(
        !q.stdout.lines().any(|l| l.starts_with("9 ")),
        "a forged row: {}",
        q.stdout
    );
    q.stdout_has("\\u{1b}[32mOK");
    // JSON output stays exact: the resource is the guest's string, byte for byte.
    let j = sb.capgate(["audit", "query", "audit.jsonl", "--format", "json"]);
    let row: Value = serde_json::from_str(j.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(row["resource"], forged);
}

#[test]
fn a_flood_of_identical_denials_is_folded_with_exact_counts() {
    let sb = fixture();
    const N: usize = 3000;
    let r = run(&sb, &["read-n", "/data/secret.txt", &N.to_string()]);
    r.expect(0).stdout_has("ok: 0");
    // stderr: a few lines, then a count of the rest.
    let shown = r
        .stderr
        .matches("capgate: denied `probe` fs.read /data/secret.txt")
        .count();
    assert!(shown <= 40, "{shown} denial lines on stderr");
    let held: usize = r
        .stderr
        .lines()
        .filter_map(|l| {
            let (n, rest) = l.strip_prefix("capgate: ")?.split_once(' ')?;
            rest.starts_with("more denials not shown")
                .then(|| n.parse::<usize>().ok())?
        })
        .sum();
    assert_eq!(shown + held, N, "{}", r.stderr);
    // The log: far fewer records than decisions, and their counts add up to every one.
    let denials: Vec<Value> = lines(&sb)
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .collect();
    assert!(denials.len() < 20, "{} records", denials.len());
    let total: u64 = denials
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(total, N as u64);
    verify(&sb, &[])
        .expect(0)
        .stdout_has(&format!("{N} decisions"));
    sb.capgate(["audit", "summary", "audit.jsonl"])
        .expect(0)
        .stdout_has(&format!("{N} decisions"));
}

#[test]
fn readers_stream_a_log_larger_than_their_memory() {
    use std::io::Write as _;
    // 150,000 records (about 65 MB) read under a 100 MB address-space limit: reading the
    // whole log into memory, as the readers once did, takes well over that.
    const RECORDS: u64 = 150_000;
    let sb = Sandbox::new();
    sb.write("app.wasm", b"\0asm");
    sb.write(
        "policy.yaml",
        "capgate: 1\nname: p\nversion: 1\ncomponents:\n  probe:\n    component: app.wasm\n",
    );
    let mut out = std::io::BufWriter::new(std::fs::File::create(sb.path("big.jsonl")).unwrap());
    let zeros = "0".repeat(64);
    let first = format!(
        r#"{{"seq":0,"ts":"2026-11-29T00:00:00.000000Z","type":"start","capgate":"0.1.0","prev":"{zeros}"}}"#
    );
    writeln!(out, "{first}").unwrap();
    let mut prev = Sha256::of(first.as_bytes()).to_string();
    for seq in 1..=RECORDS {
        let line = format!(
            r#"{{"seq":{seq},"ts":"2026-11-29T00:00:00.000000Z","component":"probe","sha256":"{}","action":"fs.read","resource":"/data/file-{}.txt","context":{{}},"decision":"deny","reasons":[],"policy":{{"name":"p","version":1,"sha256":"{}"}},"prev":"{prev}"}}"#,
            "a".repeat(64),
            seq % 1000,
            "b".repeat(64),
        );
        writeln!(out, "{line}").unwrap();
        prev = Sha256::of(line.as_bytes()).to_string();
    }
    out.flush().unwrap();
    drop(out);
    let bounded = |args: &str| {
        let script = format!(
            "ulimit -v 100000; exec '{}' {args}",
            env!("CARGO_BIN_EXE_capgate")
        );
        let mut cmd = std::process::Command::new("bash");
        cmd.args(["-c", &script]).current_dir(sb.path(""));
        cmd.env_remove("CAPGATE_STATE_DIR");
        Run::from_output(cmd.output().unwrap())
    };
    bounded("audit verify big.jsonl")
        .expect(0)
        .stdout_has(&format!("{RECORDS} decisions"));
    bounded("audit summary big.jsonl --top 1")
        .expect(0)
        .stdout_has(&format!("{RECORDS} decisions"));
    bounded("audit query big.jsonl --component nobody")
        .expect(0)
        .stdout_has("(no matching records)");
    bounded("audit replay big.jsonl --policy policy.yaml --allow-unsigned")
        .expect(0)
        .stdout_has(&format!("replayed {RECORDS} decisions"));
}

#[test]
fn lines_appended_by_someone_else_are_not_continued_or_proven() {
    let sb = fixture();
    run(&sb, &["write", "/data/a", "x"]).expect(0);
    // The attack: append a decision chained to the last line, so the chain stays intact, for
    // the next run's checkpoints to sign.
    let text = std::fs::read_to_string(sb.path("audit.jsonl")).unwrap();
    let last = text.lines().last().unwrap();
    let last_v: Value = serde_json::from_str(last).unwrap();
    let mut forged = lines(&sb)
        .into_iter()
        .find(|r| r["decision"] == "deny")
        .unwrap();
    forged["seq"] = (last_v["seq"].as_u64().unwrap() + 1).into();
    forged["decision"] = "allow".into();
    forged["prev"] = Sha256::of(last.as_bytes()).to_string().into();
    std::fs::write(sb.path("audit.jsonl"), format!("{text}{forged}\n")).unwrap();
    run(&sb, &["write", "/data/b", "x"])
        .expect(73)
        .stderr_has("the log goes on past where this host last left it");
    verify(&sb, &["--state-dir", "state"])
        .expect(77)
        .stderr_has("the log goes on past where this host last left it");
}

#[test]
fn live_does_not_accept_a_log_with_its_checkpoints_removed() {
    let sb = fixture();
    for path in ["/data/a", "/data/b"] {
        run(&sb, &["write", path, "x"]).expect(0);
    }
    // Keep the `start` records (which declare the key), drop every checkpoint, re-chain.
    let records: Vec<Value> = lines(&sb)
        .into_iter()
        .filter(|r| r["type"] != "checkpoint")
        .collect();
    rechain(&sb, &records);
    verify(&sb, &["--live"])
        .expect(79)
        .stderr_has("no record of seq 0..=");
    // Control: a log that really is being written (its last records after a valid
    // checkpoint) is accepted with `--live`.
    let sb = fixture();
    run(&sb, &["write", "/data/a", "x"]).expect(0);
    let mut text = std::fs::read_to_string(sb.path("audit.jsonl")).unwrap();
    let last = text.lines().last().unwrap().to_owned();
    let mut more = lines(&sb)
        .into_iter()
        .find(|r| r["decision"] == "deny")
        .unwrap();
    more["seq"] = (serde_json::from_str::<Value>(&last).unwrap()["seq"]
        .as_u64()
        .unwrap()
        + 1)
    .into();
    more["prev"] = Sha256::of(last.as_bytes()).to_string().into();
    text.push_str(&format!("{more}\n"));
    std::fs::write(sb.path("audit.jsonl"), text).unwrap();
    verify(&sb, &["--live"])
        .expect(0)
        .stdout_has("not proven yet (live)");
    verify(&sb, &[]).expect(79);
}
