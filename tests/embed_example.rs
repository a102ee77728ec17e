//! `examples/embed.rs` works: its code is compiled into this test and run for real against a
//! signed policy and the probe guest.

mod common;

#[path = "../examples/embed.rs"]
#[allow(dead_code)]
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
