//! Audit records exported over OTLP/HTTP to an in-process receiver (a real hyper server that
//! decodes the protobuf requests): every record arrives, in order, with the line as its body
//! so the receiving side verifies the chain and the signed checkpoints; failed exports are
//! retried and counted; an unreachable collector never blocks or fails enforcement and loses
//! nothing locally.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{Run, Sandbox, signed_probe_policy};
use http_body_util::{BodyExt as _, Full};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

const TRUST: &str = "capgate-trust: 1\nkeys: { release: keys/release.pub, alice: keys/alice.pub, auditor: keys/auditor.pub }\nroles:\n  artifact: { keys: [release], threshold: 1 }\n  policy: { keys: [alice], threshold: 1 }\n  audit: { keys: [auditor], threshold: 1 }\n";

/// What the receiver got: each log record's `capgate.seq` attribute and its body.
type Received = Arc<Mutex<Vec<(i64, String)>>>;

/// An OTLP/HTTP receiver on a loopback port, answering 503 to its first `fail_first`
/// requests (what it got then is not kept). Runs until the test process ends.
fn receiver(fail_first: usize) -> (String, Received) {
    let received: Received = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let got = received.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let fails = Arc::new(AtomicUsize::new(fail_first));
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (got, fails) = (got.clone(), fails.clone());
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (got, fails) = (got.clone(), fails.clone());
                        async move {
                            let path_ok = req.uri().path() == "/v1/logs"
                                && req.headers()["content-type"] == "application/x-protobuf";
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let failing = fails
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                            let status = if !path_ok {
                                404
                            } else if failing {
                                503
                            } else {
                                200
                            };
                            if status == 200 {
                                let request = ExportLogsServiceRequest::decode(body).unwrap();
                                let mut got = got.lock().unwrap();
                                for rl in request.resource_logs {
                                    for sl in rl.scope_logs {
                                        for r in sl.log_records {
                                            let seq = r
                                                .attributes
                                                .iter()
                                                .find(|kv| kv.key == "capgate.seq")
                                                .and_then(|kv| kv.value.clone()?.value);
                                            let Some(Value::IntValue(seq)) = seq else {
                                                panic!("no seq: {r:?}")
                                            };
                                            let Some(Value::StringValue(body)) =
                                                r.body.and_then(|b| b.value)
                                            else {
                                                panic!("no body")
                                            };
                                            got.push((seq, body));
                                        }
                                    }
                                }
                            }
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util_io(stream), service),
                );
            }
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}/v1/logs"), received)
}

fn hyper_util_io(
    s: tokio::net::TcpStream,
) -> wasmtime_wasi_http::io::TokioIo<tokio::net::TcpStream> {
    wasmtime_wasi_http::io::TokioIo::new(s)
}

/// A probe with `/data` read-only and a rule denying one file; every decision audited to
/// `audit.jsonl`, checkpoints signed by `auditor` every 3 records.
fn fixture(extra_audit: &str) -> Sandbox {
    let sb = Sandbox::new();
    sb.write("data/ok.txt", "fine");
    sb.write("data/secret.txt", "secret");
    sb.write(
        "rules.cedar",
        "@id(\"no-secret\")\nforbid (principal, action == Action::\"fs.read\", resource) when { resource.path == \"/data/secret.txt\" };\n",
    );
    signed_probe_policy(
        &sb,
        &format!(
            "capgate: 1\nname: exported\nversion: 1\nrules: [rules.cedar]\naudit: {{ level: all, log: audit.jsonl, checkpoint_every: 3{extra_audit} }}\ncomponents:\n  probe:\n    component: probe.wasm\n    files: [{{ host: data, guest: /data }}]\n"
        ),
    );
    sb.keys(&["auditor"]);
    sb.write("trust.yaml", TRUST);
    sb
}

fn run(sb: &Sandbox, extra: &[&str], args: &[&str]) -> Run {
    let mut argv = vec!["--audit-key", "keys/auditor.key"];
    argv.extend_from_slice(extra);
    Run::from_output(
        sb.command(common::run_argv(&argv, "probe", args))
            .output()
            .unwrap(),
    )
}

#[test]
fn every_record_arrives_in_order_and_the_receiver_can_verify_the_chain_and_checkpoints() {
    // The collector refuses the first two requests: they are retried and counted.
    let (endpoint, received) = receiver(2);
    let sb = fixture("");
    let runs: Vec<Run> = [
        ["read", "/data/ok.txt"],
        ["read", "/data/secret.txt"],
        ["read", "/data/ok.txt"],
        ["read", "/data/secret.txt"],
    ]
    .iter()
    .map(|args| run(&sb, &["--audit-otlp", &endpoint], args))
    .collect();
    for r in &runs {
        r.stderr_has(" 0 dropped");
    }
    runs[0].stderr_has("2 failed attempt(s) retried");
    runs[1].stderr_has("0 failed attempt(s)");
    let local = String::from_utf8(sb.read("audit.jsonl")).unwrap();
    // Each record once (a retried batch may arrive twice: keep the first of each seq), in
    // the order of the local log, byte for byte.
    let got = received.lock().unwrap().clone();
    let mut seen = std::collections::BTreeSet::new();
    let exported: Vec<(i64, String)> = got.into_iter().filter(|(s, _)| seen.insert(*s)).collect();
    let seqs: Vec<i64> = exported.iter().map(|(s, _)| *s).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(seqs, sorted, "records arrived out of order");
    let bodies: Vec<&str> = exported.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, local.lines().collect::<Vec<_>>());
    assert!(local.contains("\"decision\":\"deny\"") && local.contains("\"type\":\"checkpoint\""));
    // The receiving side rebuilds the log from what arrived and verifies it: chain and
    // signed checkpoints.
    sb.write("received.jsonl", bodies.join("\n") + "\n");
    sb.capgate(["audit", "verify", "received.jsonl", "--trust", "trust.yaml"])
        .expect(0)
        .stdout_has("checkpoint");
    // And an edit of a received record is caught there.
    let mut edited = bodies.iter().map(|b| b.to_string()).collect::<Vec<_>>();
    let i = edited
        .iter()
        .position(|b| b.contains("\"decision\":\"deny\""))
        .unwrap();
    edited[i] = edited[i].replace("\"decision\":\"deny\"", "\"decision\":\"allow\"");
    sb.write("edited.jsonl", edited.join("\n") + "\n");
    sb.capgate(["audit", "verify", "edited.jsonl", "--trust", "trust.yaml"])
        .expect(77)
        .stderr_has("it was edited");
}

#[test]
fn an_unreachable_collector_neither_blocks_nor_fails_enforcement_and_the_local_log_is_whole() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sb = fixture(&format!(", otlp: \"http://127.0.0.1:{port}/v1/logs\""));
    let started = std::time::Instant::now();
    // The policy's own `audit.otlp` is used; the denial is still enforced and recorded.
    let r = run(&sb, &[], &["read", "/data/secret.txt"]);
    r.stdout_has("denied");
    r.stderr_has("exported 0 audit record(s)")
        .stderr_has("dropped from the export");
    run(&sb, &[], &["read", "/data/ok.txt"]).stdout_has("ok: \"fine\"");
    // Closing waits a bounded time for the export, no more.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let local = String::from_utf8(sb.read("audit.jsonl")).unwrap();
    assert!(local.contains("/data/secret.txt") && local.contains("/data/ok.txt"));
    sb.capgate(["audit", "verify", "audit.jsonl", "--trust", "trust.yaml"])
        .expect(0);
}

#[test]
fn export_needs_a_local_log_and_an_http_endpoint() {
    let sb = fixture("");
    run(
        &sb,
        &["--audit-otlp", "https://collector.example/v1/logs"],
        &["read", "/data/ok.txt"],
    )
    .expect(64)
    .stderr_has("HTTPS");
    // A policy without a log of its own, and no `--audit`: nothing to export from.
    common::resign_policy(
        &sb,
        "capgate: 1\nname: exported\nversion: 2\ncomponents:\n  probe:\n    component: probe.wasm\n",
    );
    let mut cmd = sb.command(common::run_argv(
        &["--audit-otlp", "http://127.0.0.1:9/v1/logs"],
        "probe",
        &["read", "/x"],
    ));
    cmd.env_remove("CAPGATE_AUDIT_OTLP");
    Run::from_output(cmd.output().unwrap())
        .expect(64)
        .stderr_has("source of truth");
    // In the policy, an `https` endpoint is an error at its line.
    sb.write("bad.yaml", "capgate: 1\nname: b\nversion: 1\naudit: { log: a.jsonl, otlp: \"ftp://x\" }\ncomponents:\n  probe:\n    component: probe.wasm\n");
    sb.capgate(["policy", "check", "bad.yaml"])
        .expect(65)
        .stderr_has("bad.yaml:4:");
}
