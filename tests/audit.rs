//! The audit log: every kind of decision from real guest runs, the tamper table, replay,
//! concurrency, failure modes, rotation and the tracing sink.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use capgate::VerifiedPolicy;
use capgate::audit::{
    self, AuditLevel, Auditor, Checkpointer, JsonlOptions, JsonlSink, MemorySink, OnFailure,
};
use capgate::authz::{Action, Request};
use capgate::signing::{SecretKey, TrustRoot};
use common::{Run, Sandbox, http_server, pong_server, signed_policy};
use serde_json::Value;

/// Adds an `auditor` key with the `audit` role to the sandbox's trust root.
fn add_auditor(sb: &Sandbox) {
    sb.keys(&["auditor"]);
    sb.write(
        "trust.yaml",
        "capgate-trust: 1\nkeys: { release: keys/release.pub, alice: keys/alice.pub, auditor: keys/auditor.pub }\nroles:\n  artifact: { keys: [release], threshold: 1 }\n  policy: { keys: [alice], threshold: 1 }\n  audit: { keys: [auditor], threshold: 1 }\n",
    );
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn find<'a>(recs: &'a [Value], action: &str, resource: &str) -> &'a Value {
    recs.iter()
        .find(|r| r["action"] == action && r["resource"] == resource)
        .unwrap_or_else(|| {
            panic!(
                "no `{action}` record for `{resource}` in:\n{}",
                recs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
}

#[track_caller]
fn decided(r: &Value, decision: &str, reasons: &[&str]) {
    assert_eq!(r["decision"], decision, "{r}");
    let got: Vec<&str> = r["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(got, reasons, "{r}");
}

fn sha256_hex(path: &Path) -> String {
    capgate::signing::Sha256::of(&std::fs::read(path).unwrap()).to_string()
}

#[test]
fn every_kind_of_decision_from_real_guests_is_recorded_with_its_fields() {
    let sb = Sandbox::new();
    let pong = pong_server("127.0.0.1:0").unwrap().port();
    let web = http_server("127.0.0.1:0").unwrap().port();
    sb.write("data/a.txt", "hello\n");
    let policy = format!(
        "capgate: 1
name: audited
version: 3
audit: {{ level: all, log: audit.jsonl, checkpoint_every: 4 }}
components:
  probe:
    component: probe.wasm
    files: [{{ host: data, guest: /data, access: read-only }}]
    network:
      connect: [tcp://127.0.0.1:{pong}]
      lookup: [localhost]
    http:
      - url: http://127.0.0.1:{web}/ok/
        methods: [GET]
  client:
    component: vault-client.wasm
    calls:
      - {{ component: vault, interface: test:secrets/vault, functions: [get-public] }}
  vault:
    component: vault.wasm
"
    );
    signed_policy(&sb, &["probe", "vault", "vault-client"], &policy);
    add_auditor(&sb);
    let run = |component: &str, args: &[&str]| -> Run { common::run_audited(&sb, component, args) };
    run("probe", &["read", "/data/a.txt"])
        .expect(0)
        .stdout_has("ok:");
    run("probe", &["write", "/data/a.txt", "x"])
        .expect(0)
        .stdout_has("err:");
    let ok = format!("127.0.0.1:{pong}");
    let other = format!("127.0.0.1:{}", pong.wrapping_add(1));
    run("probe", &["connect", &ok]).expect(0).stdout_has("ok:");
    run("probe", &["connect", &other])
        .expect(0)
        .stdout_has("err:");
    run("probe", &["lookup", "localhost"])
        .expect(0)
        .stdout_has("ok:");
    run("probe", &["lookup", "db.internal"])
        .expect(0)
        .stdout_has("err:");
    let allowed_url = format!("http://127.0.0.1:{web}/ok/x?token=s3cr3t-query");
    run("probe", &["http", "GET", &allowed_url])
        .expect(0)
        .stdout_has("ok: 200");
    run(
        "probe",
        &["http", "GET", &format!("http://127.0.0.1:{web}/admin")],
    )
    .expect(0)
    .stdout_has("err:");
    run("client", &["public", "secret"]).expect(69);

    let log = sb.path("audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("s3cr3t-query"),
        "the query string is in the log in clear"
    );
    let recs = records(&log);
    let policy_sha = sha256_hex(&sb.path("policy.yaml"));
    let probe_sha = sha256_hex(&sb.path("probe.wasm"));

    decided(
        find(&recs, "fs.read", "/data/a.txt"),
        "allow",
        &["probe.files[0]"],
    );
    decided(find(&recs, "fs.write", "/data/a.txt"), "deny", &[]);
    let r = find(&recs, "net.connect", &format!("tcp://{ok}"));
    decided(r, "allow", &["probe.network.connect[0]"]);
    assert_eq!(r["component"], "probe");
    assert_eq!(r["sha256"], probe_sha.as_str());
    assert_eq!(r["policy"]["name"], "audited");
    assert_eq!(r["policy"]["version"], 3);
    assert_eq!(r["policy"]["sha256"], policy_sha.as_str());
    decided(
        find(&recs, "net.connect", &format!("tcp://{other}")),
        "deny",
        &[],
    );
    decided(
        find(&recs, "net.lookup", "localhost"),
        "allow",
        &["probe.network.lookup[0]"],
    );
    decided(find(&recs, "net.lookup", "db.internal"), "deny", &[]);

    let h = find(
        &recs,
        "http.request",
        &format!("http://127.0.0.1:{web}/ok/x"),
    );
    decided(h, "allow", &["probe.http[0]"]);
    assert_eq!(h["context"]["method"], "GET");
    assert!(
        h["context"]["query"]
            .as_str()
            .unwrap()
            .starts_with("salted-sha256:"),
        "{h}"
    );
    decided(
        find(
            &recs,
            "http.request",
            &format!("http://127.0.0.1:{web}/admin"),
        ),
        "deny",
        &[],
    );

    let c = find(&recs, "call", "vault/test:secrets/vault@0.1.0#get-public");
    decided(c, "allow", &["client.calls[0]"]);
    assert_eq!(c["component"], "client");
    assert_eq!(c["context"]["function"], "get-public");
    assert!(
        c["context"]["args"]
            .as_str()
            .unwrap()
            .starts_with("salted-sha256:")
    );
    decided(
        find(&recs, "call", "vault/test:secrets/vault@0.1.0#get-secret"),
        "deny",
        &[],
    );

    // Nine runs appended to one chain, each closed with a signed checkpoint.
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    let starts = recs.iter().filter(|r| r["type"] == "start").count();
    assert_eq!(starts, 9);
    let v = sb.capgate([
        "--log-format",
        "json",
        "audit",
        "verify",
        "audit.jsonl",
        "--trust",
        "trust.yaml",
    ]);
    v.expect(0);
    let report: Value = serde_json::from_str(v.stdout.trim()).unwrap();
    assert_eq!(report["decisions"], 10, "{report}");
    assert_eq!(report["sealed"], true);
    assert_eq!(report["signers"][0], "auditor");

    // Query: denials of the probe only.
    let q = sb.capgate([
        "audit",
        "query",
        "audit.jsonl",
        "--component",
        "probe",
        "--decision",
        "deny",
        "--format",
        "json",
    ]);
    q.expect(0);
    let rows: Vec<Value> = q
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "{}", q.stdout);
    assert!(
        rows.iter()
            .all(|r| r["component"] == "probe" && r["decision"] == "deny")
    );
    // Summary: per component/action/decision, and the most denied resources.
    let s = sb.capgate(["--log-format", "json", "audit", "summary", "audit.jsonl"]);
    s.expect(0);
    let summary: Value = serde_json::from_str(s.stdout.trim()).unwrap();
    assert_eq!(summary["decisions"], 10);
    let count = |c: &str, a: &str, d: &str| {
        summary["counts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["component"] == c && x["action"] == a && x["decision"] == d)
            .map_or(0, |x| x["count"].as_u64().unwrap())
    };
    assert_eq!(count("probe", "net.connect", "allow"), 1);
    assert_eq!(count("probe", "net.connect", "deny"), 1);
    assert_eq!(count("client", "call", "deny"), 1);
    assert_eq!(summary["top_denied"].as_array().unwrap().len(), 5);
}

// ---- library fixtures: a policy whose decisions need no guest --------------------------------

const BASE: &str = "capgate: 1
name: replayed
version: 1
components:
  app:
    component: app.wasm
    network:
      connect: [tcp://10.0.0.0/8:5432, tcp://127.0.0.1:6379]
      lookup: [db.internal, cache.internal]
    http:
      - https://api.example.com/v1/
";

fn library_policy(sb: &Sandbox, file: &str, yaml: &str) -> VerifiedPolicy {
    sb.write("app.wasm", b"\0asm not compiled here");
    let p = sb.write(file, yaml);
    capgate::danger::load_unsigned_policy(&p).unwrap()
}

fn requests() -> Vec<Request> {
    let mut v = Vec::new();
    for addr in [
        "10.1.2.3:5432",
        "127.0.0.1:6379",
        "127.0.0.1:6380",
        "10.0.0.1:22",
    ] {
        v.push(Request::Socket {
            action: Action::NetConnect,
            addr: addr.parse().unwrap(),
        });
    }
    for name in ["db.internal", "cache.internal", "evil.example"] {
        v.push(Request::Lookup { name: name.into() });
    }
    for path in ["/v1/users", "/v2/users"] {
        v.push(Request::Http {
            method: "GET".into(),
            scheme: capgate::policy::pattern::HttpScheme::Https,
            host: "api.example.com".into(),
            port: 443,
            path: path.into(),
        });
    }
    v
}

fn auditor_key(sb: &Sandbox) -> SecretKey {
    SecretKey::load(&sb.path("keys/auditor.key")).unwrap()
}

fn trust_with_auditor() -> Sandbox {
    let sb = Sandbox::new();
    sb.keys(&["alice", "release", "auditor"]);
    sb.write(
        "trust.yaml",
        "capgate-trust: 1\nkeys: { release: keys/release.pub, alice: keys/alice.pub, auditor: keys/auditor.pub }\nroles:\n  policy: { keys: [alice], threshold: 1 }\n  audit: { keys: [auditor], threshold: 1 }\n",
    );
    sb
}

/// A log of every request in [`requests`] under [`BASE`], at level `all`, checkpointed every
/// `every` records, written by a [`JsonlSink`].
fn write_log(sb: &Sandbox, every: u64) -> PathBuf {
    let policy = library_policy(sb, "policy.yaml", BASE);
    let path = sb.path("audit.jsonl");
    let sink = JsonlSink::open(
        &path,
        JsonlOptions {
            checkpoints: Some(Checkpointer::new(auditor_key(sb), every)),
            ..Default::default()
        },
    )
    .unwrap();
    let auditor = Auditor::new(sink).level(AuditLevel::All);
    for r in requests() {
        common::decide_and_record(&auditor, &policy, "app", &r);
    }
    auditor.close().unwrap();
    path
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn audit_verify_names_the_first_bad_line_of_each_tampering() {
    let sb = trust_with_auditor();
    let log = write_log(&sb, 3);
    let original = lines_of(&log);
    // start, 3 decisions, checkpoint, 3, checkpoint, 3, checkpoint: 13 lines.
    assert_eq!(original.len(), 13, "{original:#?}");
    assert!(original[4].contains("\"checkpoint\""), "{}", original[4]);

    let verify = || sb.capgate(["audit", "verify", "audit.jsonl", "--trust", "trust.yaml"]);
    // Control: the untouched log verifies, sealed by its last checkpoint.
    verify()
        .expect(0)
        .stdout_has("ok: 13 records intact (seq 0..=12): 9 decisions; 3 checkpoint(s) signed by auditor, the last at the end of the log");

    type Tamper = Box<dyn Fn(&mut Vec<String>)>;
    let forged_sig = {
        let alice = SecretKey::load(&sb.path("keys/alice.key")).unwrap();
        let mut cp: Value = serde_json::from_str(&original[4]).unwrap();
        let first: &str = &original[0];
        let message = audit::checkpoint_message(
            &capgate::signing::Sha256::of(first.as_bytes()),
            cp["seq"].as_u64().unwrap(),
            cp["ts"].as_str().unwrap(),
            &cp["prev"].as_str().unwrap().parse().unwrap(),
        );
        cp["signatures"] =
            serde_json::to_value([capgate::signing::SignatureEntry::sign(&alice, &message)])
                .unwrap();
        cp.to_string()
    };
    let rows: Vec<(&str, Tamper, u64, &str)> = vec![
        (
            "edit a field",
            Box::new(|l: &mut Vec<String>| l[5] = l[5].replace("\"deny\"", "\"allow\"")),
            6,
            "it was edited",
        ),
        (
            "delete a line",
            Box::new(|l: &mut Vec<String>| {
                l.remove(6);
            }),
            7,
            "seq 7 follows seq 5: records are missing",
        ),
        (
            "insert a line",
            Box::new(|l: &mut Vec<String>| {
                let copy = l[2].clone();
                l.insert(6, copy);
            }),
            7,
            "seq 2 follows seq 5: a record was inserted",
        ),
        (
            "swap two lines",
            Box::new(|l: &mut Vec<String>| l.swap(6, 7)),
            7,
            "seq 7 follows seq 5",
        ),
        (
            "forge a checkpoint signature",
            Box::new(move |l: &mut Vec<String>| l[4] = forged_sig.clone()),
            5,
            "the checkpoint's signature is not valid",
        ),
        (
            "corrupt a checkpoint signature",
            Box::new(|l: &mut Vec<String>| {
                let mut cp: Value = serde_json::from_str(&l[8]).unwrap();
                let sig = cp["signatures"][0]["sig"].as_str().unwrap().to_owned();
                let flipped = if sig.starts_with('A') { "B" } else { "A" };
                cp["signatures"][0]["sig"] = Value::String(format!("{flipped}{}", &sig[1..]));
                l[8] = cp.to_string();
            }),
            9,
            "the checkpoint's signature is not valid",
        ),
    ];
    for (name, tamper, line, message) in rows {
        let mut lines = original.clone();
        tamper(&mut lines);
        write_lines(&log, &lines);
        let r = verify();
        r.expect(77)
            .stderr_has(&format!("audit.jsonl:{line}: "))
            .stderr_has(message);
        eprintln!("{name}: {}", r.stderr.trim());
    }

    // Truncating at the end of a line: the chain is intact, but the records after the last
    // checkpoint are not proven (exit 79), and the output says which are.
    let mut lines = original.clone();
    lines.truncate(11);
    write_lines(&log, &lines);
    verify()
        .expect(79)
        .stderr_has("records seq 0..=8 are proven by checkpoints; seq 9..=10 are not")
        .stderr_has("the end of the log may have been cut off");

    // Truncating inside the last line: the incomplete line is named.
    let mut bytes = (original.join("\n") + "\n").into_bytes();
    bytes.truncate(bytes.len() - 20);
    std::fs::write(&log, bytes).unwrap();
    verify()
        .expect(77)
        .stderr_has("audit.jsonl:13: the line is incomplete");

    // A log still being written may end without a checkpoint, with a warning.
    let mut lines = original.clone();
    lines.truncate(11);
    write_lines(&log, &lines);
    sb.capgate([
        "audit",
        "verify",
        "audit.jsonl",
        "--trust",
        "trust.yaml",
        "--live",
    ])
    .expect(0)
    .stderr_has("may have been cut off");
}

#[test]
fn replay_lists_exactly_the_decisions_a_policy_change_flips() {
    let sb = trust_with_auditor();
    let log = write_log(&sb, 1000);
    let recorded: Vec<(String, String)> = records(&log)
        .iter()
        .filter(|r| r.get("type").is_none())
        .map(|r| {
            (
                r["resource"].as_str().unwrap().to_owned(),
                r["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(recorded.len(), 9);

    // Stricter: the Redis grant is gone and a rule forbids one lookup.
    sb.write(
        "strict.cedar",
        "@id(\"no-cache-lookups\")\nforbid (principal, action == Action::\"net.lookup\", resource)\nwhen { resource.name == \"cache.internal\" };\n",
    );
    library_policy(
        &sb,
        "strict.yaml",
        &BASE
            .replace("version: 1", "version: 2\nrules: [strict.cedar]")
            .replace(", tcp://127.0.0.1:6379", ""),
    );
    // Looser: every port of loopback, and a second API version.
    library_policy(
        &sb,
        "loose.yaml",
        &BASE
            .replace("tcp://127.0.0.1:6379", "tcp://127.0.0.1:*")
            .replace("https://api.example.com/v1/", "https://api.example.com/"),
    );
    let replay = |policy: &str| -> Vec<(String, String, String)> {
        let r = sb.capgate([
            "--log-format",
            "json",
            "audit",
            "replay",
            "audit.jsonl",
            "--policy",
            policy,
            "--allow-unsigned",
        ]);
        r.expect(0);
        let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["resource"].as_str().unwrap().to_owned(),
                    c["now"].as_str().unwrap().to_owned(),
                    format!("{}", c["now_reasons"]),
                )
            })
            .collect()
    };
    assert_eq!(
        replay("strict.yaml"),
        [
            (
                "tcp://127.0.0.1:6379".to_owned(),
                "deny".to_owned(),
                "[]".to_owned()
            ),
            (
                "cache.internal".to_owned(),
                "deny".to_owned(),
                "[\"no-cache-lookups\"]".to_owned()
            ),
        ]
    );
    assert_eq!(
        replay("loose.yaml"),
        [
            (
                "tcp://127.0.0.1:6380".to_owned(),
                "allow".to_owned(),
                "[\"app.network.connect[1]\"]".to_owned()
            ),
            (
                "https://api.example.com:443/v2/users".to_owned(),
                "allow".to_owned(),
                "[\"app.http[0]\"]".to_owned()
            ),
        ]
    );
    // Control: the policy the log was written under changes nothing.
    assert_eq!(replay("policy.yaml"), []);
    // The text form names the rule that changes a decision.
    sb.capgate([
        "audit",
        "replay",
        "audit.jsonl",
        "--policy",
        "strict.yaml",
        "--allow-unsigned",
    ])
    .expect(0)
    .stdout_has("2 would change (2 allow → deny, 0 deny → allow)")
    .stdout_has("app net.lookup cache.internal: allow → deny (denied by `no-cache-lookups`");
}

#[test]
fn many_threads_deciding_at_once_make_one_consistent_chain() {
    const THREADS: usize = 8;
    const EACH: usize = 500;
    let sb = trust_with_auditor();
    let policy = Arc::new(library_policy(&sb, "policy.yaml", BASE));
    let path = sb.path("audit.jsonl");
    let sink = JsonlSink::open(
        &path,
        JsonlOptions {
            checkpoints: Some(Checkpointer::new(auditor_key(&sb), 100)),
            ..Default::default()
        },
    )
    .unwrap();
    let auditor = Arc::new(Auditor::new(sink).level(AuditLevel::All));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (auditor, policy) = (auditor.clone(), policy.clone());
            std::thread::spawn(move || {
                let reqs = requests();
                for i in 0..EACH {
                    common::decide_and_record(
                        &auditor,
                        &policy,
                        "app",
                        &reqs[(t + i) % reqs.len()],
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    auditor.close().unwrap();
    let trust = TrustRoot::load(&sb.path("trust.yaml")).unwrap();
    let v = audit::verify(&[path], Some(&trust), false).unwrap();
    assert_eq!(v.decisions, (THREADS * EACH) as u64);
    assert_eq!(v.checkpoints, (THREADS * EACH / 100) as u64);
    assert!(v.sealed);
    assert_eq!(v.missed, 0);
}

#[test]
fn fail_closed_denies_what_cannot_be_recorded_and_continue_leaves_a_gap() {
    let sb = trust_with_auditor();
    let policy = library_policy(&sb, "policy.yaml", BASE);
    let redis = Request::Socket {
        action: Action::NetConnect,
        addr: "127.0.0.1:6379".parse().unwrap(),
    };
    let link = sb.path("audit.jsonl");
    std::os::unix::fs::symlink("/dev/full", &link).unwrap();

    // Fail-closed: every write to a full device fails, so an allowed request is denied.
    let closed =
        Auditor::new(JsonlSink::deferred(&link, JsonlOptions::default())).level(AuditLevel::All);
    let d = common::decide_and_record(&closed, &policy, "app", &redis);
    assert!(!d.allowed, "{d:?}");
    assert!(
        d.errors[0].contains("the audit record could not be written")
            && d.errors[0].contains("No space left on device"),
        "{d:?}"
    );
    // Control: the same request with a writable log is allowed and recorded.
    let memory = Arc::new(MemorySink::new(None));
    let ok = Auditor::new(memory.clone()).level(AuditLevel::All);
    assert!(common::decide_and_record(&ok, &policy, "app", &redis).allowed);
    assert_eq!(memory.lines().len(), 2);

    // Continue: the decisions stand while the log cannot be written...
    let cont = Auditor::new(JsonlSink::deferred(&link, JsonlOptions::default()))
        .level(AuditLevel::All)
        .on_failure(OnFailure::Continue);
    for _ in 0..3 {
        assert!(common::decide_and_record(&cont, &policy, "app", &redis).allowed);
    }
    assert_eq!(cont.missed(), 3);
    // ...and once it can, a gap record says how many were lost, before the next record.
    std::fs::remove_file(&link).unwrap();
    assert!(common::decide_and_record(&cont, &policy, "app", &redis).allowed);
    cont.close().unwrap();
    let recs = records(&link);
    let kinds: Vec<&str> = recs
        .iter()
        .map(|r| r["type"].as_str().unwrap_or("decision"))
        .collect();
    assert_eq!(kinds, ["start", "gap", "decision"]);
    assert_eq!(recs[1]["missed"], 3);
    assert!(
        recs[1]["error"]
            .as_str()
            .unwrap()
            .contains("No space left on device")
    );
    let v = audit::verify(&[link], None, false).unwrap();
    assert_eq!((v.gaps, v.missed, v.decisions), (1, 3, 1));
}

/// A destination nothing can create a file in, even as root.
fn unwritable_log(sb: &Sandbox) -> PathBuf {
    let p = if is_root() {
        PathBuf::from("/sys/capgate-audit-test.jsonl")
    } else {
        let dir = sb.path("ro");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o555))
            .unwrap();
        dir.join("audit.jsonl")
    };
    assert!(
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&p)
            .is_err(),
        "precondition: `{}` must not be writable",
        p.display()
    );
    p
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

#[test]
fn a_run_with_an_unwritable_log_refuses_fail_closed_and_warns_in_continue_mode() {
    let sb = Sandbox::new();
    let pong = pong_server("127.0.0.1:0").unwrap().port();
    let policy = |mode: &str| {
        format!(
            "capgate: 1
name: failing
version: {}
audit: {{ level: all, on_failure: {mode} }}
components:
  probe:
    component: probe.wasm
    network:
      connect: [tcp://127.0.0.1:{pong}]
",
            // A changed policy is a new version.
            if mode == "continue" { 2 } else { 1 }
        )
    };
    signed_policy(&sb, &["probe"], &policy("fail-closed"));
    let log = unwritable_log(&sb);
    let target = format!("127.0.0.1:{pong}");
    let run = |log: &Path| {
        sb.capgate([
            "run",
            "--policy",
            "policy.yaml",
            "--trust",
            "trust.yaml",
            "--audit",
            log.to_str().unwrap(),
            "--",
            "connect",
            &target,
        ])
    };
    let r = run(&log);
    r.expect(73)
        .stderr_has("cannot open the audit log")
        .stderr_has("fail-closed, so nothing runs without its log");
    assert!(r.stdout.is_empty(), "the guest ran: {}", r.stdout);
    // Control: a writable log, and the connect goes through and is recorded.
    run(&sb.path("ok.jsonl")).expect(0).stdout_has("ok:");
    assert_eq!(records(&sb.path("ok.jsonl")).len(), 2);

    // Continue: the guest runs, the host says records were lost.
    common::resign_policy(&sb, &policy("continue"));
    run(&log)
        .expect(0)
        .stdout_has("ok:")
        .stderr_has("1 audit record(s) could not be written");
}

#[test]
fn rotation_carries_the_chain_across_files_and_a_reopened_log_continues_it() {
    let sb = trust_with_auditor();
    let policy = library_policy(&sb, "policy.yaml", BASE);
    let path = sb.path("audit.jsonl");
    for _ in 0..2 {
        let sink = JsonlSink::open(
            &path,
            JsonlOptions {
                rotate: Some(4096),
                checkpoints: Some(Checkpointer::new(auditor_key(&sb), 50)),
                ..Default::default()
            },
        )
        .unwrap();
        let auditor = Auditor::new(sink).level(AuditLevel::All);
        for r in requests().iter().cycle().take(60) {
            common::decide_and_record(&auditor, &policy, "app", r);
        }
        auditor.close().unwrap();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("audit.jsonl"))
        .collect();
    assert!(files.len() >= 4, "{files:?}");
    // Given in any order, the files are one chain.
    files.reverse();
    let trust = TrustRoot::load(&sb.path("trust.yaml")).unwrap();
    let v = audit::verify(&files, Some(&trust), false).unwrap();
    assert_eq!(v.decisions, 120);
    assert!(v.sealed && v.warnings.is_empty(), "{v:?}");
    // The newest file alone verifies too, but says it continues another.
    let v = audit::verify(std::slice::from_ref(&path), Some(&trust), false).unwrap();
    assert!(
        v.warnings[0].contains("continues a file not given here"),
        "{v:?}"
    );
    // Without one of the middle files, the chain is broken where it is missing.
    files.sort();
    let without: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, f)| f.clone())
        .collect();
    let err = audit::verify(&without, Some(&trust), false).unwrap_err();
    assert!(err.message.contains("records are missing"), "{err}");
}

#[test]
fn a_second_writer_is_refused_while_the_log_is_locked() {
    let sb = Sandbox::new();
    let path = sb.path("audit.jsonl");
    let first = JsonlSink::open(&path, JsonlOptions::default()).unwrap();
    let second = JsonlSink::open(&path, JsonlOptions::default()).unwrap_err();
    assert!(
        second
            .to_string()
            .contains("another process is writing this log"),
        "{second}"
    );
    drop(first);
    // Control: once the first writer is gone, the log can be opened and continues. Another
    // test of this binary forking a process at that moment briefly shares the descriptor (and
    // so the lock) until the child execs, so the reopen may take a few tries.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match JsonlSink::open(&path, JsonlOptions::default()) {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("is locked"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("the log stayed locked after its writer closed: {e}"),
        }
    }
    let v = audit::verify(&[path], None, false).unwrap();
    assert_eq!(v.records, 2);
}

mod tracing_sink {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// A subscriber that keeps each event's target, level and fields.
    #[derive(Clone, Default)]
    pub(crate) struct Collect(pub(crate) Arc<Mutex<Vec<String>>>);

    struct Fields(String);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    impl Subscriber for Collect {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let m = event.metadata();
            let mut f = Fields(format!("{} {}", m.target(), m.level()));
            event.record(&mut f);
            self.0.lock().unwrap().push(f.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

#[test]
fn the_tracing_sink_hands_decisions_to_the_hosts_subscriber() {
    let sb = Sandbox::new();
    let policy = library_policy(&sb, "policy.yaml", BASE);
    let collect = tracing_sink::Collect::default();
    let auditor = Auditor::new(audit::TracingSink).level(AuditLevel::All);
    tracing::subscriber::with_default(collect.clone(), || {
        common::decide_and_record(
            &auditor,
            &policy,
            "app",
            &Request::Lookup {
                name: "db.internal".into(),
            },
        );
        common::decide_and_record(
            &auditor,
            &policy,
            "app",
            &Request::Lookup {
                name: "evil.example".into(),
            },
        );
    });
    let events = collect.0.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(
        events[0].starts_with("capgate::audit INFO"),
        "{}",
        events[0]
    );
    assert!(
        events[0].contains("resource=db.internal") && events[0].contains("decision=\"allow\""),
        "{}",
        events[0]
    );
    assert!(
        events[1].starts_with("capgate::audit WARN"),
        "{}",
        events[1]
    );
    assert!(
        events[1].contains("resource=evil.example") && events[1].contains("decision=\"deny\""),
        "{}",
        events[1]
    );
}
