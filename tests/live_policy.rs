//! `serve --poll`: new policy versions verified and activated while serving, atomically and
//! without failing a request; refused versions leave the last good one serving; every
//! activation, refusal and expiry is an audit record. From a file and from an OCI tag.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::registry::Registry;
use common::{
    IMAGE_SERVICE_POLICY as POLICY, Sandbox, Server, image_service_command, image_service_sandbox,
    request, spawn_serve,
};

/// The demo policy at `version`, the handler allowed `functions` of the processor.
fn version(sb: &Sandbox, version: u32, functions: &str, extra: &str) {
    let text =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(POLICY))
            .unwrap()
            .replace("version: 1", &format!("version: {version}\n{extra}"))
            .replace(
                "functions: [apply-filter, get-dimensions]",
                &format!("functions: [{functions}]"),
            );
    sb.write(POLICY, text);
}

/// Signs the policy afresh with `key`.
fn sign(sb: &Sandbox, key: &str) {
    let _ = std::fs::remove_file(sb.path(&format!("{POLICY}.sig")));
    sb.capgate(["sign", "policy", POLICY, "--key", key])
        .expect(0);
}

/// Serves the demo under `policy`, polled every 200 ms, audited to `audit.jsonl`.
fn poll_command(sb: &Sandbox, policy: &str) -> std::process::Command {
    image_service_command(sb, policy, &["--poll", "200ms", "--audit", "audit.jsonl"])
}

fn start(sb: &Sandbox) -> Server {
    spawn_serve(poll_command(sb, POLICY))
}

/// Waits (up to 20 s) until `GET /admin` answers `status`.
fn admin_becomes(server: &Server, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if request(&server.addr, "GET", "/admin", b"").0 == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET /admin never answered {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the server's stderr until a line containing `needle` (up to the stream's end).
fn stderr_until(server: &mut Server, needle: &str) -> String {
    use std::io::BufRead as _;
    let err = server.stderr.as_mut().unwrap();
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("stderr ended before `{needle}`:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains(needle) {
            return seen;
        }
    }
}

/// Stops the server with SIGTERM (its audit log is closed) and waits for it.
fn stop(mut server: Server) -> i32 {
    std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    server.child.wait().unwrap().code().unwrap_or(-1)
}

/// The `"type":"policy"` records of the sandbox's audit log, as JSON.
fn policy_records(sb: &Sandbox) -> Vec<serde_json::Value> {
    String::from_utf8(sb.read("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "policy")
        .collect()
}

#[test]
fn a_new_version_is_activated_while_serving_without_failing_a_request_and_bad_versions_are_refused()
{
    let sb = image_service_sandbox();
    let mut server = start(&sb);
    // Version 1 does not let the handler ask for the processor's stats.
    assert_eq!(request(&server.addr, "GET", "/admin", b"").0, 403);

    // Clients keep sending requests through the switch; every one must get the handler's
    // own answer.
    let stop_load = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop_load, served, failed) = (
                server.addr.clone(),
                stop_load.clone(),
                served.clone(),
                failed.clone(),
            );
            std::thread::spawn(move || {
                while !stop_load.load(Ordering::Relaxed) {
                    match common::request_raw(&addr, "GET", "/", b"") {
                        (404, _, true) => served.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    version(&sb, 2, "apply-filter, get-dimensions, admin-stats", "");
    sign(&sb, "keys/alice.key");
    admin_becomes(&server, 200);
    let log = stderr_until(&mut server, "activated");
    assert!(log.contains("version 2 activated (was version 1)"), "{log}");
    std::thread::sleep(Duration::from_millis(300));
    stop_load.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across the switch"
    );
    assert!(
        served.load(Ordering::Relaxed) > 20,
        "too few requests to tell"
    );

    // Signed by a key without the policy role: refused, version 2 goes on.
    version(&sb, 3, "apply-filter, get-dimensions", "");
    sign(&sb, "keys/release.key");
    let log = stderr_until(&mut server, "refused");
    assert!(log.contains("version 2 goes on serving"), "{log}");
    assert_eq!(request(&server.addr, "GET", "/admin", b"").0, 200);
    // Validly signed, but older than the version accepted: a rollback, refused.
    version(&sb, 1, "apply-filter, get-dimensions", "");
    sign(&sb, "keys/alice.key");
    let log = stderr_until(&mut server, "refused");
    assert!(log.contains("version 1"), "{log}");
    assert_eq!(request(&server.addr, "GET", "/admin", b"").0, 200);
    // Validly signed and newer, but without the component served: refused, and not accepted
    // (version 5 below is not a rollback).
    sb.write(
        POLICY,
        "capgate: 1\nname: image-service\nversion: 4\ncomponents:\n  image-processor:\n    component: ../../examples/image-service/build/image_processor.wasm\n",
    );
    sign(&sb, "keys/alice.key");
    let log = stderr_until(&mut server, "refused");
    assert!(log.contains("cannot serve `http-handler`"), "{log}");
    assert_eq!(request(&server.addr, "GET", "/admin", b"").0, 200);
    // Validly signed and newer, but another policy's name: rollback protection is per name,
    // so a source now holding another policy is refused.
    version(&sb, 6, "apply-filter, get-dimensions", "");
    let text = String::from_utf8(sb.read(POLICY))
        .unwrap()
        .replace("name: image-service", "name: image-service-dev");
    sb.write(POLICY, text);
    sign(&sb, "keys/alice.key");
    let log = stderr_until(&mut server, "refused");
    assert!(
        log.contains("it is policy `image-service-dev`, not `image-service`"),
        "{log}"
    );
    assert_eq!(request(&server.addr, "GET", "/admin", b"").0, 200);
    // Positive control after the refusals: a good version 5 (stats no longer allowed).
    version(&sb, 5, "apply-filter, get-dimensions", "");
    sign(&sb, "keys/alice.key");
    admin_becomes(&server, 403);

    assert_eq!(stop(server), 0);
    let events: Vec<(String, u64)> = policy_records(&sb)
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_owned(),
                r["policy"]["version"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = |e: &str, v: u64| (e.to_owned(), v);
    assert_eq!(
        events,
        [
            want("activated", 2),
            want("refused", 2),
            want("refused", 2),
            want("refused", 2),
            want("refused", 2),
            want("activated", 5)
        ]
    );
    sb.capgate(["audit", "verify", "audit.jsonl"]).expect(0);
}

#[test]
fn a_version_pushed_to_the_polled_oci_tag_is_activated_and_one_without_its_signature_refused() {
    let reg = Registry::start();
    let sb = image_service_sandbox();
    let cache = sb.path("oci-cache");
    let push = |what: &str, file: &str, target: &str| {
        let mut cmd = sb.command(["push", what, file, target]);
        cmd.env("CAPGATE_OCI_CACHE", &cache);
        assert!(cmd.status().unwrap().success());
    };
    let handler = reg.oci("demo/http-handler:v1");
    let processor = reg.oci("demo/image-processor:v1");
    push(
        "artifact",
        "examples/image-service/build/http_handler.wasm",
        &handler,
    );
    push(
        "artifact",
        "examples/image-service/build/image_processor.wasm",
        &processor,
    );
    let from_registry = |v: u32, functions: &str, tag: &str| {
        version(&sb, v, functions, "");
        let text = String::from_utf8(sb.read(POLICY))
            .unwrap()
            .replace(
                "../../examples/image-service/build/http_handler.wasm",
                &handler,
            )
            .replace(
                "../../examples/image-service/build/image_processor.wasm",
                &processor,
            );
        sb.write(POLICY, text);
        sign(&sb, "keys/alice.key");
        push("policy", POLICY, &reg.oci(&format!("demo/policy:{tag}")));
    };
    from_registry(1, "apply-filter, get-dimensions", "live");
    let tag = reg.oci("demo/policy:live");
    let mut server = {
        let mut cmd = poll_command(&sb, &tag);
        cmd.env("CAPGATE_OCI_CACHE", &cache);
        spawn_serve(cmd)
    };
    assert_eq!(request(&server.addr, "GET", "/admin", b"").0, 403);
    from_registry(2, "apply-filter, get-dimensions, admin-stats", "live");
    admin_becomes(&server, 200);
    stderr_until(&mut server, "activated");

    // Version 3 reaches the polled tag without its signature (the registry withholds it):
    // refused and recorded, version 2 goes on.
    from_registry(3, "apply-filter, get-dimensions", "staging");
    let v3 = reg.manifest("demo/policy", "staging");
    reg.withhold_signatures(
        "demo/policy",
        &format!("sha256:{}", capgate::signing::Sha256::of(&v3)),
    );
    reg.put_manifest(
        "demo/policy",
        "live",
        &v3,
        "application/vnd.oci.image.manifest.v1+json",
    );
    let log = stderr_until(&mut server, "refused");
    assert!(log.contains("no capgate signature"), "{log}");
    assert_eq!(request(&server.addr, "GET", "/admin", b"").0, 200);

    assert_eq!(stop(server), 0);
    let records = policy_records(&sb);
    let events: Vec<_> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    // Each version's first use pins what its components' references resolved to.
    assert_eq!(
        events,
        ["loaded", "loaded", "activated", "refused"],
        "{records:?}"
    );
    let pinned = records[0]["components"]["http-handler"].as_str().unwrap();
    assert!(
        pinned.starts_with(&reg.oci("demo/http-handler@sha256:")),
        "{pinned}"
    );
    assert_eq!(records[2]["source"], tag.as_str());
}

#[test]
fn serving_stops_when_the_version_served_expires_not_an_earlier_one() {
    let sb = image_service_sandbox();
    let at = |secs: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(secs))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    version(
        &sb,
        2,
        "apply-filter, get-dimensions",
        &format!("expires: {}", at(4)),
    );
    sign(&sb, "keys/alice.key");
    let mut server = start(&sb);
    let first = Instant::now();
    // Renewed before it expires: version 3 expires later.
    version(
        &sb,
        3,
        "apply-filter, get-dimensions, admin-stats",
        &format!("expires: {}", at(10)),
    );
    sign(&sb, "keys/alice.key");
    admin_becomes(&server, 200);
    // Past version 2's expiry, version 3 still serves.
    while first.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(request(&server.addr, "GET", "/admin", b"").0, 200);
    // Then version 3 expires: serving stops, with exit 77 and a record.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "serve went on past its policy's expiry"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(77));
    let mut rest = String::new();
    let _ = server.stderr.take().unwrap().read_to_string(&mut rest);
    assert!(rest.contains("version 3 has expired"), "{rest}");
    let events: Vec<_> = policy_records(&sb)
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["event"].as_str().unwrap(),
                r["policy"]["version"]
            )
        })
        .collect();
    assert_eq!(events, ["activated 3", "expired 3"]);
}
