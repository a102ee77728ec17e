//! `examples/embed.rs` works: its code is compiled into this test and run for real against a
//! signed policy and the probe guest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[path = "../examples/embed.rs"]
#[allow(dead_code, unreachable_pub)]
mod embed;

use common::{Sandbox, pong_server, signed_probe_policy};

#[tokio::test(flavor = "multi_thread")]
async fn the_embedding_example_runs_a_guest_and_reports_denials() {
    let sb = Sandbox::new();
    let port = pong_server("127.0.0.1:0").unwrap().port();
    let other = pong_server("127.0.0.1:0").unwrap().port();
    signed_probe_policy(
        &sb,
        &format!(
            "capgate: 1\nname: embed\nversion: 1\ncomponents:\n  probe:\n    component: probe.wasm\n    stdio: {{ stdout: closed }}\n    network: {{ connect: [tcp://127.0.0.1:{port}] }}\n"
        ),
    );
    let run = |args: Vec<String>| {
        let sb = &sb;
        async move {
            embed::run(
                &sb.path("policy.yaml"),
                &sb.path("trust.yaml"),
                &sb.path("state"),
                "probe",
                &args,
            )
            .await
            .unwrap()
        }
    };
    let allowed = run(vec!["connect".into(), format!("127.0.0.1:{port}")]).await;
    assert_eq!(allowed.exit, 0);
    assert!(allowed.denials.is_empty(), "{:?}", allowed.denials);

    let denied = run(vec!["connect".into(), format!("127.0.0.1:{other}")]).await;
    assert_eq!(denied.exit, 0, "the guest sees an error and exits normally");
    assert_eq!(
        denied.denials,
        [format!(
            "probe net.connect tcp://127.0.0.1:{other}: denied: no grant matches"
        )]
    );

    // A tampered policy is refused before anything runs.
    sb.write("policy.yaml", "capgate: 1\nname: embed\nversion: 1\ncomponents:\n  probe: { component: probe.wasm, network: { connect: [tcp://127.0.0.1:1-65535] } }\n");
    let err = embed::run(
        &sb.path("policy.yaml"),
        &sb.path("trust.yaml"),
        &sb.path("state"),
        "probe",
        &[],
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("content does not match its signature"),
        "{err}"
    );
}

/// The decision records of a log, without what differs between two runs (times and the
/// hashes that chain them).
fn decisions(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("action").is_some())
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.remove("ts");
            o.remove("prev");
            r
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedding_example_audits_exactly_as_capgate_run_does() {
    let port = pong_server("127.0.0.1:0").unwrap().port();
    let other = pong_server("127.0.0.1:0").unwrap().port();
    let policy = format!(
        "capgate: 1\nname: embed\nversion: 1\naudit: {{ level: all, log: audit.jsonl }}\ncomponents:\n  probe:\n    component: probe.wasm\n    stdio: {{ stdout: closed }}\n    network: {{ connect: [tcp://127.0.0.1:{port}] }}\n"
    );
    let ops = [
        vec!["connect".to_owned(), format!("127.0.0.1:{port}")],
        vec!["connect".to_owned(), format!("127.0.0.1:{other}")],
    ];

    // The library, through the example's code.
    let lib = Sandbox::new();
    signed_probe_policy(&lib, &policy);
    for args in &ops {
        embed::run(
            &lib.path("policy.yaml"),
            &lib.path("trust.yaml"),
            &lib.path("state"),
            "probe",
            args,
        )
        .await
        .unwrap();
    }
    // The CLI, with the same policy in another directory.
    let cli = Sandbox::new();
    signed_probe_policy(&cli, &policy);
    for args in &ops {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run_probe(&cli, "probe", &args).expect(0);
    }

    let (ours, theirs) = (
        decisions(&lib.path("audit.jsonl")),
        decisions(&cli.path("audit.jsonl")),
    );
    assert_eq!(ours.len(), 2, "one allow and one deny: {ours:#?}");
    assert_eq!(ours[0]["decision"], "allow");
    assert_eq!(ours[1]["decision"], "deny");
    assert_eq!(ours, theirs);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fail_closed_policy_whose_log_cannot_be_written_runs_nothing_when_embedded() {
    let sb = Sandbox::new();
    sb.write("out/.keep", "");
    // The log's directory does not exist, so the log cannot be opened; `on_failure` is
    // fail-closed by default.
    let policy = |log: &str, version: u32| {
        format!(
            "capgate: 1\nname: closed\nversion: {version}\naudit: {{ log: {log} }}\ncomponents:\n  probe:\n    component: probe.wasm\n    stdio: {{ stdout: closed }}\n    files: [{{ host: out, guest: /out, access: read-write }}]\n"
        )
    };
    signed_probe_policy(&sb, &policy("missing/audit.jsonl", 1));
    let (policy_path, trust, state) = (
        sb.path("policy.yaml"),
        sb.path("trust.yaml"),
        sb.path("state"),
    );
    let args = [
        "write".to_owned(),
        "/out/ran.txt".to_owned(),
        "yes".to_owned(),
    ];
    let run = || embed::run(&policy_path, &trust, &state, "probe", &args);
    let err = run().await.err().expect("the run is refused");
    assert!(
        err.to_string()
            .contains("fail-closed, so nothing runs without its log"),
        "{err}"
    );
    assert!(!sb.path("out/ran.txt").exists(), "the guest did not run");

    // Control: the same policy with a log it can write runs the guest.
    // A changed policy is a new version.
    common::resign_policy(&sb, &policy("audit.jsonl", 2));
    let ok = run().await.unwrap();
    assert_eq!(ok.exit, 0);
    assert_eq!(
        std::fs::read_to_string(sb.path("out/ran.txt")).unwrap(),
        "yes"
    );
    assert!(sb.path("audit.jsonl").exists());
}
