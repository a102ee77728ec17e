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
      - { host: data, guest: /data }
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

/// `capgate policy learn LOG --policy policy.yaml --trust trust.yaml EXTRA...`.
fn run_learn(sb: &Sandbox, log: &str, extra: &[&str]) -> Run {
    let mut argv = vec![
        "policy",
        "learn",
        log,
        "--policy",
        "policy.yaml",
        "--trust",
        "trust.yaml",
    ];
    argv.extend_from_slice(extra);
    sb.capgate(argv)
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
    std::fs::remove_file(sb.path("logs/x")).unwrap();
    let learn = run_learn(&sb, "observed.jsonl", &[]);
    learn.expect(0);
    learn.stdout_has("learned `svc` version 2 from ");
    learn.stdout_has("wrote policy.learned.yaml");
    learn.stdout_has("proof: the 6 distinct request(s) learned from are all allowed under the learned policy, and 0 of the 0 recorded denial(s) would be allowed");
    learn.stdout_has("every allowed decision learned from is still allowed, and nothing denied is");
    let learned = std::fs::read_to_string(sb.path("policy.learned.yaml")).unwrap();

    // Each grant is exactly what was used, with its evidence.
    for want in [
        "version: 2",
        "{ host: \"data/app\", guest: \"/data/app\", access: read-only }  # 2 records: 2 reads, 0 writes",
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
    run_learn(&sb, "observed.jsonl", &[])
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
    assert!(!sb.path("logs/x").exists());
}

#[test]
fn learning_from_a_log_without_allowed_decisions_says_what_is_needed() {
    let sb = Sandbox::new();
    sb.write("data/x.txt", "x");
    sb.write("logs/.keep", "");
    signed_probe_policy(&sb, &BROAD.replace("level: all", "level: deny"));
    // A denial only: the log holds no evidence of what is needed.
    probe(&sb, "policy.yaml", &["read", "/elsewhere/x"]);
    let learn = run_learn(&sb, "audit.jsonl", &[]);
    learn.expect(65);
    learn.stderr_has("the logs hold no allowed decision of `svc`'s components to learn from");
    learn.stderr_has("audit: { level: all }");
    assert!(!sb.path("policy.learned.yaml").exists());
}

#[test]
fn a_writable_mount_stays_where_it_is_and_a_read_only_one_moves_down() {
    let sb = Sandbox::new();
    sb.write("data/out/.keep", "");
    sb.write("ro/deep/dir/f.txt", "f");
    sb.write("ro/other.txt", "o");
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
      - { host: ro, guest: /ro }
      - { host: ro, guest: rel }
",
    );
    ok(&probe(
        &sb,
        "policy.yaml",
        &["write", "/data/out/new.txt", "x"],
    ));
    ok(&probe(&sb, "policy.yaml", &["read", "/ro/deep/dir/f.txt"]));
    ok(&probe(&sb, "policy.yaml", &["read", "rel/deep/dir/f.txt"]));
    run_learn(&sb, "audit.jsonl", &["--out", "narrow.yaml"]).expect(0);
    let learned = std::fs::read_to_string(sb.path("narrow.yaml")).unwrap();
    // The guest could have replaced `/data/out` with a symlink: a mount it can write is not
    // moved down.
    assert!(
        learned.contains("{ host: \"data\", guest: \"/data\", access: read-write }"),
        "{learned}"
    );
    assert!(
        learned.contains("{ host: \"ro/deep/dir\", guest: \"/ro/deep/dir\", access: read-only }"),
        "{learned}"
    );
    // The guest finds a relative mount by its name: it is not moved.
    assert!(
        learned.contains("{ host: \"ro\", guest: \"rel\", access: read-only }"),
        "{learned}"
    );
    sb.capgate(["sign", "policy", "narrow.yaml", "--key", "keys/alice.key"])
        .expect(0);
    ok(&probe(
        &sb,
        "narrow.yaml",
        &["write", "/data/out/again.txt", "y"],
    ));
    ok(&probe(&sb, "narrow.yaml", &["read", "/ro/deep/dir/f.txt"]));
    ok(&probe(&sb, "narrow.yaml", &["read", "rel/deep/dir/f.txt"]));
    refused(&probe(&sb, "narrow.yaml", &["read", "/ro/other.txt"]));
}

#[test]
fn a_request_the_ssrf_guard_refused_is_not_learned_as_a_grant_naming_its_address() {
    let sb = Sandbox::new();
    let web = http_server("127.0.0.1:0").unwrap();
    signed_probe_policy(
        &sb,
        "capgate: 1
name: svc
version: 1
audit: { level: all, log: audit.jsonl }
components:
  probe:
    component: probe.wasm
    http:
      - { url: \"http://*:*\", methods: [GET] }
      - https://api.example.com
",
    );
    // The grant allows it, the guard refuses a loopback address no grant names.
    let r = probe(
        &sb,
        "policy.yaml",
        &["http", "GET", &format!("http://{web}/internal")],
    );
    refused(&r);
    // A learned grant naming 127.0.0.1 would lift the guard: nothing is learned from it.
    let learn = run_learn(&sb, "audit.jsonl", &[]);
    learn.expect(65);
    learn.stderr_has("the logs hold no allowed decision");
    assert!(!sb.path("policy.learned.yaml").exists());
}

#[test]
fn records_of_another_policy_or_forged_ones_teach_nothing_the_broad_policy_does_not_allow() {
    let sb = Sandbox::new();
    sb.write("data/a.txt", "a");
    signed_probe_policy(
        &sb,
        "capgate: 1
name: svc
version: 1
audit: { level: all, log: audit.jsonl }
components:
  probe:
    component: probe.wasm
    files: [{ host: data, guest: /data }]
    network: { connect: [tcp://127.0.0.1:5432] }
",
    );
    ok(&probe(&sb, "policy.yaml", &["read", "/data/a.txt"]));
    // Forged records appended: a connection the broad policy does not grant, one of another
    // policy, and a pin that would inject YAML.
    let log = std::fs::read_to_string(sb.path("audit.jsonl")).unwrap();
    let real = log.lines().find(|l| l.contains("\"fs.read\"")).unwrap();
    let forged = [
        real.replace("\"fs.read\"", "\"net.connect\"")
            .replace("\"/data/a.txt\"", "\"tcp://10.9.9.9:22\""),
        real.replace("\"name\":\"svc\"", "\"name\":\"legacy\"")
            .replace("/data/a.txt", "/data/b.txt"),
        real.replace(
            "\"sha256\":\"",
            "\"sha256\":\"x\\n    network: { connect: [\\\"tcp://*:*\\\"] }\\n",
        ),
    ];
    sb.write("forged.jsonl", format!("{log}{}\n", forged.join("\n")));
    run_learn(&sb, "forged.jsonl", &[])
        .expect(0)
        .stdout_has("were not learned from: the broad policy does not allow their request");
    let learned = std::fs::read_to_string(sb.path("policy.learned.yaml")).unwrap();
    assert!(!learned.contains("10.9.9.9"), "{learned}");
    assert!(!learned.contains("b.txt"), "{learned}");
    assert!(!learned.contains("tcp://*"), "{learned}");
    assert!(!learned.contains("network:"), "{learned}");
}
