//! Every enforcement point decides through the gate: each decision of a real run (files,
//! sockets, DNS, outbound HTTP, calls between components) reaches the audit log and the
//! observer exactly once, in the same order, allowed and denied alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use capgate::signing::{StateStore, TrustRoot};
use capgate::{DecisionEvent, Host, HostConfig, VerifiedPolicy};
use common::{Sandbox, http_server, pong_server, signed_policy};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn every_enforcement_point_records_each_decision_once_in_the_log_and_the_observer() {
    let sb = Sandbox::new();
    let port = pong_server("127.0.0.1:0").unwrap().port();
    let closed = pong_server("127.0.0.1:0").unwrap().port();
    let web = http_server("127.0.0.1:0").unwrap().port();
    sb.write("data/a.txt", "hello");
    signed_policy(
        &sb,
        &["probe", "vault", "vault-client"],
        &format!(
            "capgate: 1\nname: walk\nversion: 1\naudit: {{ level: all, log: audit.jsonl }}\ncomponents:\n  probe:\n    component: probe.wasm\n    stdio: {{ stdout: closed }}\n    files: [{{ host: data, guest: /data }}]\n    network: {{ connect: [tcp://127.0.0.1:{port}], lookup: [localhost] }}\n    http: [http://127.0.0.1:{web}/]\n  client:\n    component: vault-client.wasm\n    stdio: {{ stdout: closed }}\n    calls: [{{ component: vault, interface: test:secrets/vault, functions: [get-public] }}]\n  vault:\n    component: vault.wasm\n"
        ),
    );
    let trust = TrustRoot::load(&sb.path("trust.yaml")).unwrap();
    let policy = Arc::new(
        VerifiedPolicy::load(
            &sb.path("policy.yaml"),
            &trust,
            &StateStore::at(sb.path("state")),
        )
        .unwrap(),
    );
    let events: Arc<Mutex<Vec<DecisionEvent>>> = Arc::default();
    let seen = events.clone();
    let host = Host::new(HostConfig::new().observe(move |e| seen.lock().unwrap().push(e.clone())))
        .unwrap();

    let probe = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (host, policy) = (&host, &policy);
        async move { host.run(policy, "probe", &args).await.unwrap() }
    };
    probe(&["read", "/data/a.txt"]).await;
    probe(&["write", "/data/a.txt", "x"]).await;
    probe(&["connect", &format!("127.0.0.1:{port}")]).await;
    probe(&["connect", &format!("127.0.0.1:{closed}")]).await;
    probe(&["lookup", "localhost"]).await;
    probe(&["lookup", "db.example"]).await;
    probe(&["http", "GET", &format!("http://127.0.0.1:{web}/x")]).await;
    probe(&["http", "GET", &format!("http://127.0.0.1:{closed}/x")]).await;
    let public = host.run(&policy, "client", &["public".into()]).await;
    assert_eq!(public.unwrap(), 0);
    let secret = host.run(&policy, "client", &["secret".into()]).await;
    assert!(
        secret.unwrap_err().to_string().contains("denied"),
        "the denied call traps the caller"
    );
    host.close().unwrap();

    let log = std::fs::read_to_string(sb.path("audit.jsonl")).unwrap();
    let records: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r.get("type").is_none() && r.get("action").is_some())
        .collect();
    let from_log: Vec<(String, String, bool)> = records
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["resource"].as_str().unwrap().to_owned(),
                r["decision"] == "allow",
            )
        })
        .collect();
    let observed: Vec<(String, String, bool)> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e.action.as_str().to_owned(),
                e.resource.clone(),
                e.decision.allowed,
            )
        })
        .collect();
    assert_eq!(
        observed, from_log,
        "the observer and the log saw the same decisions"
    );

    // Each route decided at least once each way (so the comparison above covers all five).
    for action in [
        "fs.read",
        "net.connect",
        "net.lookup",
        "http.request",
        "call",
    ] {
        for allowed in [true, false] {
            if action == "fs.read" && !allowed {
                continue;
            }
            assert!(
                from_log
                    .iter()
                    .any(|(a, _, ok)| a == action && *ok == allowed),
                "no {} `{action}` in {from_log:#?}",
                if allowed { "allowed" } else { "denied" }
            );
        }
    }
    assert!(
        from_log
            .iter()
            .any(|(a, r, ok)| a == "fs.write" && r == "/data/a.txt" && !ok),
        "the write to the read-only mount is recorded as denied: {from_log:#?}"
    );
    // And no decision is recorded twice: each line of the log is one decision.
    let mut seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), n);
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_sharing_one_log_share_its_writer_and_a_closed_host_reopens_it() {
    let sb = Sandbox::new();
    let port = pong_server("127.0.0.1:0").unwrap().port();
    let closed = pong_server("127.0.0.1:0").unwrap().port();
    std::fs::copy(common::guests::guest("probe"), sb.path("probe.wasm")).unwrap();
    sb.write(
        "policy.yaml",
        format!(
            "capgate: 1\nname: shared\nversion: 1\naudit: {{ level: all, log: audit.jsonl }}\ncomponents:\n  probe:\n    component: probe.wasm\n    stdio: {{ stdout: closed }}\n    network: {{ connect: [tcp://127.0.0.1:{port}] }}\n"
        ),
    );
    // Two verifications of the same file are two policies to the host, with one log.
    let load = || Arc::new(capgate::danger::load_unsigned_policy(&sb.path("policy.yaml")).unwrap());
    let (first, second) = (load(), load());
    let host = Host::new(HostConfig::new()).unwrap();
    let connect = |p: u16| vec!["connect".to_owned(), format!("127.0.0.1:{p}")];
    assert_eq!(host.run(&first, "probe", &connect(port)).await.unwrap(), 0);
    assert_eq!(
        host.run(&second, "probe", &connect(closed)).await.unwrap(),
        0
    );
    host.close().unwrap();
    // After `close`, a run opens the log again and continues its chain.
    assert_eq!(host.run(&first, "probe", &connect(port)).await.unwrap(), 0);
    host.close().unwrap();

    let decisions: Vec<(String, String)> = std::fs::read_to_string(sb.path("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r.get("action").is_some())
        .map(|r| {
            (
                r["resource"].as_str().unwrap().to_owned(),
                r["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            (format!("tcp://127.0.0.1:{port}"), "allow".to_owned()),
            (format!("tcp://127.0.0.1:{closed}"), "deny".to_owned()),
            (format!("tcp://127.0.0.1:{port}"), "allow".to_owned()),
        ]
    );
    sb.capgate(["audit", "verify", "audit.jsonl"]).expect(0);
}
