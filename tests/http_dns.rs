//! Outbound HTTP and DNS through the real `capgate run`, against a real HTTP server on
//! loopback: the allowed URL is reached; another port, host, path, method, an unlisted DNS
//! name, and a name resolving to loopback without a loopback grant are all denied while the
//! server is up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Run, Sandbox, http_server, run_probe, signed_probe_policy};

fn fixture() -> (Sandbox, u16, u16) {
    let sb = Sandbox::new();
    let port = http_server("127.0.0.1:0").unwrap().port();
    let other = http_server("127.0.0.1:0").unwrap().port();
    let policy = format!(
        "capgate: 1
name: http
version: 1
components:
  probe:
    component: probe.wasm
    network:
      lookup: [localhost]
    http:
      - {{ url: http://127.0.0.1:{port}/api/, methods: [GET] }}
      - http://localhost:{port}/named/
  wildcard:
    component: probe.wasm
    http:
      - http://*:{port}
"
    );
    signed_probe_policy(&sb, &policy);
    (sb, port, other)
}

#[track_caller]
fn reached(r: &Run, body: &str) {
    r.expect(0);
    assert_eq!(
        r.stdout.trim(),
        format!("ok: 200 {body}"),
        "stderr: {}",
        r.stderr
    );
}

#[track_caller]
fn refused(r: &Run, code: &str, denial: &str) {
    r.expect(0);
    assert_eq!(
        r.stdout.trim(),
        format!("err: ErrorCode::{code}"),
        "stderr: {}",
        r.stderr
    );
    r.stderr_has(denial);
}

#[test]
fn http_escape_table() {
    let (sb, port, other) = fixture();
    let p = |args: &[&str]| run_probe(&sb, "probe", args);

    // Controls: the granted URL, method and path prefix reach the real server.
    reached(
        &p(&["http", "GET", &format!("http://127.0.0.1:{port}/api/v1")]),
        "GET /api/v1",
    );
    reached(
        &p(&["http", "GET", &format!("http://localhost:{port}/named/x")]),
        "GET /named/x",
    );

    let no_grant = "no grant matches";
    refused(
        &p(&["http", "GET", &format!("http://127.0.0.1:{other}/api/v1")]),
        "HttpRequestDenied",
        no_grant,
    );
    refused(
        &p(&["http", "GET", &format!("http://127.0.0.2:{port}/api/v1")]),
        "HttpRequestDenied",
        no_grant,
    );
    refused(
        &p(&[
            "http",
            "GET",
            &format!("http://other.invalid:{port}/api/v1"),
        ]),
        "HttpRequestDenied",
        no_grant,
    );
    refused(
        &p(&["http", "GET", &format!("http://127.0.0.1:{port}/apix")]),
        "HttpRequestDenied",
        no_grant,
    );
    refused(
        &p(&["http", "GET", &format!("http://127.0.0.1:{port}/")]),
        "HttpRequestDenied",
        no_grant,
    );
    refused(
        &p(&["http", "POST", &format!("http://127.0.0.1:{port}/api/v1")]),
        "HttpRequestDenied",
        no_grant,
    );
    refused(
        &p(&["http", "GET", &format!("https://127.0.0.1:{port}/api/v1")]),
        "HttpRequestDenied",
        no_grant,
    );
}

#[test]
fn ssrf_guard_keeps_names_off_loopback_unless_granted() {
    let (sb, port, _) = fixture();
    // `http://*:PORT` allows any host by name, but a name that resolves to loopback is refused
    // on the address actually connected to...
    let r = run_probe(
        &sb,
        "wildcard",
        &["http", "GET", &format!("http://localhost:{port}/x")],
    );
    refused(
        &r,
        "DestinationIpProhibited",
        "SSRF guard: `localhost` resolves only to internal addresses",
    );
    // ...while the same server is reachable where a grant names loopback itself (controls
    // above: `127.0.0.1` and `localhost` grants), and an address literal the wildcard covers
    // is still internal, so it is refused too.
    let r = run_probe(
        &sb,
        "wildcard",
        &["http", "GET", &format!("http://127.0.0.1:{port}/x")],
    );
    refused(&r, "DestinationIpProhibited", "SSRF guard");
}

#[test]
fn dns_lookups_only_for_listed_names() {
    let (sb, _, _) = fixture();
    let r = run_probe(&sb, "probe", &["lookup", "localhost"]);
    r.expect(0);
    assert!(r.stdout.starts_with("ok: "), "{}", r.stdout);
    let r = run_probe(&sb, "probe", &["lookup", "example.invalid"]);
    r.expect(0);
    assert!(r.stdout.starts_with("err: "), "{}", r.stdout);
    r.stderr_has("denied `probe` net.lookup example.invalid: no grant matches");
    // A component without lookup grants resolves nothing.
    let r = run_probe(&sb, "wildcard", &["lookup", "localhost"]);
    assert!(r.stdout.starts_with("err: "), "{}", r.stdout);
    r.stderr_has("denied `wildcard` net.lookup localhost");
}

#[test]
fn requests_that_could_differ_on_the_server_are_refused() {
    let (sb, port, _) = fixture();
    let p = |url: String| run_probe(&sb, "probe", &["http", "GET", &url]);
    let not_normal = "the path is not in normal form";
    // Each would leave the granted `/api/` prefix once the server normalises it.
    for path in [
        "/api/../secret",
        "/api/%2e%2e/secret",
        "/api/..%2fsecret",
        "/api/./x",
        "/api/%2E%2E/secret",
    ] {
        refused(
            &p(format!("http://127.0.0.1:{port}{path}")),
            "HttpRequestUriInvalid",
            not_normal,
        );
    }
    // Path forms servers read differently: `;` parameters, double encoding, overlong UTF-8,
    // and empty segments (which would also carry another authority, `//internal.example/`).
    for (path, why) in [
        ("/api/..;/admin", "the path has `;` parameters"),
        ("/api/x;jsessionid=1", "the path has `;` parameters"),
        ("/api/%252e%252e/admin", "the path is percent-encoded twice"),
        ("/api/%c0%ae%c0%ae/admin", "do not decode to UTF-8"),
        ("/api//internal.example/x", "the path has an empty segment"),
        ("//internal.example/api/x", "the path has an empty segment"),
    ] {
        refused(
            &p(format!("http://127.0.0.1:{port}{path}")),
            "HttpRequestUriInvalid",
            why,
        );
    }
    // Control: percent-encoded UTF-8 that decodes properly still reaches the server.
    reached(
        &p(format!("http://127.0.0.1:{port}/api/caf%C3%A9")),
        "GET /api/caf%C3%A9",
    );
    // Hosts only resolvers read as numbers, and userinfo.
    refused(
        &p(format!("http://2130706433:{port}/api/v1")),
        "HttpRequestUriInvalid",
        "the host is not a DNS name or an IP address in standard form",
    );
    refused(
        &p(format!("http://user@127.0.0.1:{port}/api/v1")),
        "HttpRequestUriInvalid",
        "the URL has userinfo",
    );
    // Control: the same grant still works for a normal path, and `localhost.` is `localhost`.
    reached(&p(format!("http://127.0.0.1:{port}/api/v1")), "GET /api/v1");
    reached(
        &p(format!("http://localhost.:{port}/named/x")),
        "GET /named/x",
    );
}

#[test]
fn lookups_abandoned_before_their_answer_count_against_limits_sockets() {
    let sb = Sandbox::new();
    signed_probe_policy(
        &sb,
        "capgate: 1\nname: lookups\nversion: 1\ncomponents:\n  probe:\n    component: probe.wasm\n    network:\n      lookup: [localhost]\n    limits: { sockets: 4 }\n",
    );
    // The attack: lookups started and dropped at once, each leaving a resolver query on a
    // host thread. The fifth is refused.
    let r = run_probe(&sb, "probe", &["lookup-drop", "localhost", "50"]);
    r.expect(0)
        .stdout_has("err: after 4: ErrorCode { code: 10, name: \"new-socket-limit\"");
    // Control: lookups whose answers are read give their places back, however many.
    run_probe(&sb, "probe", &["lookup-n", "localhost", "50"])
        .expect(0)
        .stdout_has("ok: looked up 50");
}
