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
    receiver_with(fail_first, 503, None)
}

/// [`receiver`], over TLS with `tls` (certificate chain and key) when given.
fn receiver_with(
    fail_first: usize,
    fail_status: u16,
    tls: Option<(
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> (String, Received) {
    let acceptor = tls.map(|(cert, key)| {
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    });
    let scheme = if acceptor.is_some() { "https" } else { "http" };
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
                                fail_status
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
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            // A client that does not trust the certificate hangs up here.
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = builder
                                    .serve_connection(
                                        wasmtime_wasi_http::io::TokioIo::new(tls),
                                        service,
                                    )
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(hyper_util_io(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
    });
    let addr = rx.recv().unwrap();
    let host = if scheme == "https" {
        "localhost".to_owned()
    } else {
        addr.ip().to_string()
    };
    (
        format!("{scheme}://{host}:{}/v1/logs", addr.port()),
        received,
    )
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
fn an_https_collector_is_reached_when_its_certificate_chains_to_a_trusted_root() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (endpoint, received) = receiver_with(
        0,
        503,
        Some((
            key.cert.der().clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
        )),
    );
    let sb = fixture("");
    sb.write("collector-ca.pem", key.cert.pem());
    // Not trusted (not in the Web PKI roots): nothing is exported, enforcement goes on.
    run(
        &sb,
        &["--audit-otlp", &endpoint],
        &["read", "/data/secret.txt"],
    )
    .stdout_has("denied")
    .stderr_has("exported 0 audit record(s)");
    assert!(received.lock().unwrap().is_empty());
    // With the collector's CA trusted, every line of the log arrives.
    run(
        &sb,
        &[
            "--audit-otlp",
            &endpoint,
            "--audit-otlp-ca",
            "collector-ca.pem",
        ],
        &["read", "/data/ok.txt"],
    )
    .stderr_has(" 0 dropped");
    let local = String::from_utf8(sb.read("audit.jsonl")).unwrap();
    let got = received.lock().unwrap().clone();
    let second_run: Vec<&str> = local
        .lines()
        .skip_while(|l| !l.contains("/data/ok.txt"))
        .collect();
    let bodies: Vec<&str> = got.iter().map(|(_, b)| b.as_str()).collect();
    assert!(
        bodies.len() >= second_run.len() && !second_run.is_empty(),
        "{bodies:?}"
    );
    assert!(bodies.ends_with(&second_run), "{bodies:?}\n{second_run:?}");
}

#[test]
fn export_needs_a_local_log_and_an_http_endpoint() {
    let sb = fixture("");
    run(
        &sb,
        &["--audit-otlp", "ftp://collector.example/v1/logs"],
        &["read", "/data/ok.txt"],
    )
    .expect(64)
    .stderr_has("is not an `http://` or `https://` URL");
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
    // In the policy, an endpoint that is not HTTP(S) is an error at its line.
    sb.write("bad.yaml", "capgate: 1\nname: b\nversion: 1\naudit: { log: a.jsonl, otlp: \"ftp://x\" }\ncomponents:\n  probe:\n    component: probe.wasm\n");
    sb.capgate(["policy", "check", "bad.yaml"])
        .expect(65)
        .stderr_has("bad.yaml:4:");
}

#[test]
fn a_collector_that_refuses_the_request_itself_does_not_hold_up_the_lines_behind_it() {
    // 400 Bad Request to the first export: that batch is dropped (counted), not retried for
    // ever; what comes after is exported.
    let (endpoint, received) = receiver_with(1, 400, None);
    let sb = fixture("");
    let started = std::time::Instant::now();
    run(&sb, &["--audit-otlp", &endpoint], &["read", "/data/ok.txt"])
        .stderr_has("1 failed attempt(s)")
        .stderr_has(" dropped from the export")
        .stderr_has("warning: exported");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the refused batch was retried"
    );
    run(&sb, &["--audit-otlp", &endpoint], &["read", "/data/ok.txt"]).stderr_has(" 0 dropped");
    assert!(!received.lock().unwrap().is_empty());
}
