//! `capgate policy learn`: a guest runs under a broad policy with every decision audited; the
//! policy learned from the log is strictly narrower, the guest still runs under it, and what
//! only the broad policy allowed is denied.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Run, Sandbox, http_server, pong_server, signed_probe_policy};

const BROAD: &str = "capgate: 1
name: svc
version: 1
audit: { level: all, log: audit.jsonl }
components:
  probe:
    component: probe.wasm
    env: { MODE: \"prod\" }
    files:
      - { host: data, guest: /data, access: read-write }
      - { host: logs, guest: /logs, access: read-write }
    network:
      connect: [tcp://127.0.0.1:1-65535]
      lookup: [localhost, \"*.example.com\"]
    http:
      - http://127.0.0.1:*
    limits: { memory: 64MiB, timeout: 20s }
";

fn probe(sb: &Sandbox, policy: &str, args: &[&str]) -> Run {
    let mut argv = vec![
        "run",
        "--policy",
        policy,
        "--trust",
        "trust.yaml",
        "--component",
        "probe",
        "--",
    ];
    argv.extend_from_slice(args);
    let r = sb.capgate(argv);
    r.expect(0);
    r
}

#[track_caller]
fn ok(r: &Run) {
    assert!(r.stdout.starts_with("ok:"), "{}\n{}", r.stdout, r.stderr);
}

#[track_caller]
fn refused(r: &Run) {
    assert!(r.stdout.starts_with("err:"), "{}\n{}", r.stdout, r.stderr);
}

#[test]
fn a_learned_policy_allows_what_ran_and_nothing_only_the_broad_one_allowed() {
    let sb = Sandbox::new();
    sb.write("data/app/config.txt", "config");
    sb.write("data/app/other.txt", "other");
    sb.write("data/secret.txt", "secret");
    sb.write("logs/.keep", "");
    signed_probe_policy(&sb, BROAD);
    let pong = pong_server("127.0.0.1:0").unwrap();
    let other_pong = pong_server("127.0.0.1:0").unwrap();
    let web = http_server("127.0.0.1:0").unwrap();
    let (pong, other_pong) = (pong.to_string(), other_pong.to_string());
    let url = |path: &str| format!("http://{web}{path}");

    // What the service really does, under the broad policy, every decision audited.
    let workload: Vec<Vec<String>> = vec![
        vec!["read".into(), "/data/app/config.txt".into()],
        vec!["read".into(), "/data/app/other.txt".into()],
        vec!["connect".into(), pong.clone()],
        vec!["http".into(), "GET".into(), url("/v1/items")],
        vec!["http".into(), "GET".into(), url("/v1/users/7")],
        vec!["lookup".into(), "localhost".into()],
    ];
    let run_all = |policy: &str| {
        for w in &workload {
            let args: Vec<&str> = w.iter().map(String::as_str).collect();
            ok(&probe(&sb, policy, &args));
        }
    };
    run_all("policy.yaml");
    std::fs::copy(sb.path("audit.jsonl"), sb.path("observed.jsonl")).unwrap();

    // Controls: everything the learned policy must deny, the broad one allows (kept out of
    // the observed log).
    let only_broad: Vec<Vec<String>> = vec![
        vec![
            "write".into(),
            "/data/app/config.txt".into(),
            "changed".into(),
        ],
        vec!["read".into(), "/data/secret.txt".into()],
        vec!["write".into(), "/logs/x".into(), "x".into()],
        vec!["connect".into(), other_pong.clone()],
        vec!["http".into(), "POST".into(), url("/v1/items")],
        vec!["http".into(), "GET".into(), url("/v2/items")],
    ];
    for w in &only_broad {
        let args: Vec<&str> = w.iter().map(String::as_str).collect();
        ok(&probe(&sb, "policy.yaml", &args));
    }
    sb.write("data/app/config.txt", "config");

    let learn = sb.capgate([
        "policy",
        "learn",
        "observed.jsonl",
        "--policy",
        "policy.yaml",
        "--trust",
        "trust.yaml",
    ]);
    learn.expect(0);
    learn.stdout_has("learned `svc` version 2 from ");
    learn.stdout_has("wrote policy.learned.yaml");
    learn.stdout_has(": 0 would change (0 allow → deny, 0 deny → allow)");
    learn.stdout_has("every allowed decision in the logs is still allowed");
    let learned = std::fs::read_to_string(sb.path("policy.learned.yaml")).unwrap();

    // Each grant is exactly what was used, with its evidence.
    for want in [
        "version: 2",
        "{ host: \"data/app\", guest: \"/data/app\", access: read-only }  # 2 records: 2 reads, 0 writes (was read-write)",
        "# dropped: probe.files[1] (`/logs`), no allowed record",
        &format!("        - \"tcp://{pong}\"  # 1 record"),
        "        - \"localhost\"  # 1 record",
        &format!(
            "{{ url: \"http://{web}/v1\", methods: [\"GET\"] }}  # 2 records, 2 distinct paths"
        ),
        "env: { \"MODE\": \"prod\" }",
        "limits: { memory: 64MiB, timeout: 20s }",
        "sha256: ",
    ] {
        assert!(
            learned.contains(want),
            "learned policy lacks {want:?}:\n{learned}"
        );
    }
    assert!(
        !learned.contains("1-65535") && !learned.contains("example.com") && !learned.contains(":*"),
        "{learned}"
    );

    // A learned file is never overwritten.
    sb.capgate([
        "policy",
        "learn",
        "observed.jsonl",
        "--policy",
        "policy.yaml",
        "--trust",
        "trust.yaml",
    ])
    .expect(73)
    .stderr_has("name another file with `--out`");
    assert_eq!(
        std::fs::read_to_string(sb.path("policy.learned.yaml")).unwrap(),
        learned
    );

    // Signed, it runs the same workload...
    sb.capgate([
        "sign",
        "policy",
        "policy.learned.yaml",
        "--key",
        "keys/alice.key",
    ])
    .expect(0);
    sb.capgate([
        "policy",
        "check",
        "policy.learned.yaml",
        "--trust",
        "trust.yaml",
    ])
    .expect(0);
    run_all("policy.learned.yaml");
    // ...and denies everything only the broad policy allowed.
    for w in &only_broad {
        let args: Vec<&str> = w.iter().map(String::as_str).collect();
        refused(&probe(&sb, "policy.learned.yaml", &args));
    }
    assert_eq!(
        std::fs::read_to_string(sb.path("data/app/config.txt")).unwrap(),
        "config"
    );
}

#[test]
fn learning_from_a_log_without_allowed_decisions_says_what_is_needed() {
    let sb = Sandbox::new();
    sb.write("data/x.txt", "x");
    sb.write("logs/.keep", "");
    signed_probe_policy(&sb, &BROAD.replace("level: all", "level: deny"));
    // A denial only: the log holds no evidence of what is needed.
    probe(&sb, "policy.yaml", &["read", "/elsewhere/x"]);
    let learn = sb.capgate([
        "policy",
        "learn",
        "audit.jsonl",
        "--policy",
        "policy.yaml",
        "--trust",
        "trust.yaml",
    ]);
    learn.expect(65);
    learn.stderr_has("the logs hold no allowed decision of `svc`'s components to learn from");
    learn.stderr_has("audit: { level: all }");
    assert!(!sb.path("policy.learned.yaml").exists());
}

#[test]
fn a_write_keeps_its_mount_read_write_and_a_relative_mount_stays_where_it_is() {
    let sb = Sandbox::new();
    sb.write("data/out/.keep", "");
    sb.write("data/deep/dir/f.txt", "f");
    signed_probe_policy(
        &sb,
        "capgate: 1
name: svc
version: 1
audit: { level: all, log: audit.jsonl }
components:
  probe:
    component: probe.wasm
    files:
      - { host: data, guest: /data, access: read-write }
      - { host: data, guest: rel, access: read-only }
",
    );
    ok(&probe(
        &sb,
        "policy.yaml",
        &["write", "/data/out/new.txt", "x"],
    ));
    ok(&probe(&sb, "policy.yaml", &["read", "rel/deep/dir/f.txt"]));
    sb.capgate([
        "policy",
        "learn",
        "audit.jsonl",
        "--policy",
        "policy.yaml",
        "--trust",
        "trust.yaml",
        "--out",
        "narrow.yaml",
    ])
    .expect(0);
    let learned = std::fs::read_to_string(sb.path("narrow.yaml")).unwrap();
    assert!(
        learned.contains("{ host: \"data/out\", guest: \"/data/out\", access: read-write }"),
        "{learned}"
    );
    // The guest finds a relative mount by its name: it is not moved.
    assert!(
        learned.contains("{ host: \"data\", guest: \"rel\", access: read-only }"),
        "{learned}"
    );
    sb.capgate(["sign", "policy", "narrow.yaml", "--key", "keys/alice.key"])
        .expect(0);
    ok(&probe(
        &sb,
        "narrow.yaml",
        &["write", "/data/out/again.txt", "y"],
    ));
    ok(&probe(&sb, "narrow.yaml", &["read", "rel/deep/dir/f.txt"]));
    refused(&probe(
        &sb,
        "narrow.yaml",
        &["read", "/data/deep/dir/f.txt"],
    ));
}
