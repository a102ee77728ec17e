//! The library API as a host application uses it: load a policy, decide requests, run guests
//! on one `Host`, and keep serving after a guest hits a limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use capgate::authz::Request;
use capgate::policy::pattern::HttpScheme;
use capgate::{Host, HostConfig, VerifiedPolicy};
use common::{Sandbox, guests};

fn load(sb: &Sandbox, policy: &str) -> VerifiedPolicy {
    sb.write("p.yaml", policy);
    capgate::danger::load_unsigned_policy(&sb.path("p.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

fn http(method: &str, host: &str, port: u16, path: &str) -> Request {
    Request::Http {
        method: method.into(),
        scheme: HttpScheme::Https,
        host: host.into(),
        port,
        path: path.into(),
    }
}

#[test]
fn grants_allow_rules_refine_and_forbid_wins() {
    let sb = Sandbox::new();
    sb.write("app.wasm", b"\0asm\x0d\0\x01\0");
    sb.write(
        "rules.cedar",
        "@id(\"no-admin\")\nforbid(principal, action == Action::\"http.request\", resource)\nwhen { context.path like \"/repos/admin*\" };\n\
         @id(\"no-writes-to-github\")\nforbid(principal == Component::\"api\", action == Action::\"http.request\", resource)\nwhen { resource.host like \"*.github.com\" && context.method != \"GET\" };\n",
    );
    let p = load(
        &sb,
        "capgate: 1\nname: t\nversion: 1\nrules: [rules.cedar]\ncomponents:\n  api:\n    component: app.wasm\n    http:\n      - https://api.example.com\n      - https://*.github.com/repos/\n  other:\n    component: app.wasm\n",
    );
    let a = p.authority();

    let d = a.decide("api", &http("GET", "api.example.com", 443, "/v1/x"));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.reasons, ["api.http[0]"]);

    let d = a.decide("api", &http("GET", "api.github.com", 443, "/repos/x"));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.reasons, ["api.http[1]"]);

    // A rule forbids what a grant allows: forbid wins, and the decision names the rule.
    let d = a.decide("api", &http("POST", "api.github.com", 443, "/repos/x"));
    assert!(!d.allowed);
    assert_eq!(d.reasons, ["no-writes-to-github"]);
    let d = a.decide(
        "api",
        &http("GET", "api.example.com", 443, "/repos/admin/1"),
    );
    assert!(!d.allowed);
    assert_eq!(d.reasons, ["no-admin"]);

    // Outside every grant: a default deny with no reason.
    for req in [
        http("GET", "api.example.com", 8443, "/"),
        http("GET", "github.com", 443, "/repos/x"),
        http("GET", "evil.com", 443, "/"),
    ] {
        let d = a.decide("api", &req);
        assert!(!d.allowed && d.reasons.is_empty(), "{req:?}: {d:?}");
        assert_eq!(d.explain(), "denied: no grant matches");
    }
    // Another component's grants are not this one's.
    assert!(
        !a.decide("other", &http("GET", "api.example.com", 443, "/"))
            .allowed
    );
    assert!(
        !a.decide("nobody", &http("GET", "api.example.com", 443, "/"))
            .allowed
    );
    // The cache returns the same decision the evaluator makes.
    let req = http("POST", "api.github.com", 443, "/repos/x");
    assert_eq!(a.decide("api", &req), a.decide_uncached("api", &req));
}

#[test]
fn an_evaluation_error_denies() {
    let sb = Sandbox::new();
    sb.write("app.wasm", b"\0asm\x0d\0\x01\0");
    // This forbid type-checks and is false for ports up to 80, but overflows at evaluation for
    // any port above 80. Cedar skips a
    // policy that errors, which would leave the grant's permit standing; capgate denies.
    sb.write(
        "rules.cedar",
        "@id(\"overflow\")\nforbid(principal, action == Action::\"net.connect\", resource)\nwhen { context.port + 9223372036854775727 < 0 };\n",
    );
    let p = load(
        &sb,
        "capgate: 1\nname: t\nversion: 1\nrules: [rules.cedar]\ncomponents:\n  api:\n    component: app.wasm\n    network: { connect: [tcp://127.0.0.1:0-100] }\n",
    );
    let at = |port: u16| Request::Socket {
        action: capgate::authz::Action::NetConnect,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    };
    // Control: port 80 does not overflow, so the grant allows it.
    let d = p.authority().decide("api", &at(80));
    assert!(d.allowed, "{d:?}");
    let d = p.authority().decide("api", &at(81));
    assert!(!d.allowed, "{d:?}");
    assert!(d.errors.iter().any(|e| e.contains("overflow")), "{d:?}");
    assert!(d.explain().starts_with("denied: "), "{}", d.explain());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_host_survives_hostile_guests_and_keeps_serving() {
    let sb = Sandbox::new();
    std::fs::copy(guests::guest("probe"), sb.path("probe.wasm")).unwrap();
    let policy = Arc::new(load(
        &sb,
        "capgate: 1\nname: t\nversion: 1\ncomponents:\n  probe:\n    component: probe.wasm\n    stdio: { stdout: closed, stderr: closed }\n    limits: { memory: 16MiB, timeout: 1s }\n",
    ));
    let host = Host::new(HostConfig::new()).unwrap();
    for (op, limit) in [
        ("alloc", capgate::LimitHit::Memory),
        ("spin", capgate::LimitHit::Timeout),
        ("recurse", capgate::LimitHit::Stack),
    ] {
        match host.run(&policy, "probe", &[op.to_owned()]).await {
            Err(capgate::RunError::Limit { limit: hit, .. }) => assert_eq!(hit, limit, "{op}"),
            other => panic!("{op}: expected a limit, got {other:?}"),
        }
    }
    // The same host, policy and component run normally afterwards.
    assert_eq!(
        host.run(&policy, "probe", &["exit".into(), "0".into()])
            .await
            .unwrap(),
        0
    );
    assert!(matches!(
        host.run(&policy, "nobody", &[]).await,
        Err(capgate::RunError::NoSuchComponent { .. })
    ));
}

#[test]
fn the_decision_cache_never_confuses_two_requests() {
    let sb = Sandbox::new();
    sb.write("app.wasm", b"\0asm\x0d\0\x01\0");
    let p = load(
        &sb,
        "capgate: 1\nname: t\nversion: 1\ncomponents:\n  api:\n    component: app.wasm\n    http: [{ url: https://api.example.com/files/, methods: [GET] }]\n",
    );
    let a = p.authority();
    // Fields that would collide if joined into one string with `|`.
    let get = http("GET", "api.example.com", 443, "/files/|PUT");
    let odd = http("PUT|GET", "api.example.com", 443, "/files/");
    assert!(a.decide("api", &get).allowed);
    assert!(
        !a.decide("api", &odd).allowed,
        "a cached allow leaked to a different request"
    );
    assert!(!a.decide_uncached("api", &odd).allowed);
}

#[tokio::test(flavor = "multi_thread")]
async fn observers_see_every_decision_or_only_denials() {
    let sb = Sandbox::new();
    std::fs::copy(guests::guest("vault-client"), sb.path("client.wasm")).unwrap();
    std::fs::copy(guests::guest("vault"), sb.path("vault.wasm")).unwrap();
    let p = Arc::new(load(
        &sb,
        "capgate: 1\nname: t\nversion: 1\ncomponents:\n  client:\n    component: client.wasm\n    stdio: { stdout: closed }\n    calls: [{ component: vault, interface: test:secrets/vault, functions: [add] }]\n  vault:\n    component: vault.wasm\n",
    ));
    for denials_only in [false, true] {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let record = move |ev: &capgate::DecisionEvent| {
            s.lock().unwrap().push(ev.decision.allowed);
        };
        let config = if denials_only {
            HostConfig::new().observe_denials(record)
        } else {
            HostConfig::new().observe(record)
        };
        let host = Host::new(config).unwrap();
        let args = ["add", "add", "secret"].map(String::from);
        // Two allowed calls, then one the policy does not grant, which traps the client.
        let r = host.run(&p, "client", &args).await;
        assert!(
            matches!(r, Err(capgate::RunError::Trap { ref message, .. }) if message.contains("get-secret denied")),
            "{r:?}"
        );
        let seen = seen.lock().unwrap().clone();
        if denials_only {
            assert_eq!(seen, [false]);
        } else {
            assert_eq!(seen, [true, true, false]);
        }
    }
}

#[test]
fn components_without_a_timeout_or_fuel_get_the_documented_defaults_unless_danger_says_otherwise() {
    use capgate::policy::defaults;
    let sb = Sandbox::new();
    sb.write("app.wasm", b"\0asm");
    let policy = load(
        &sb,
        "capgate: 1\nname: t\nversion: 1\ncomponents:\n  plain:\n    component: app.wasm\n  own:\n    component: app.wasm\n    limits: { timeout: 2s, fuel: 5000 }\n",
    );
    let host = Host::new(HostConfig::new()).unwrap();
    let plain = host.limits(&policy, "plain").unwrap();
    assert_eq!(plain.timeout, Some(defaults::TIMEOUT));
    assert_eq!(plain.fuel, Some(defaults::FUEL));
    assert_eq!(defaults::TIMEOUT.to_string(), "1m");
    // The policy's own limits win over the defaults.
    let own = host.limits(&policy, "own").unwrap();
    assert_eq!(own.timeout.unwrap().to_string(), "2s");
    assert_eq!(own.fuel, Some(5000));
    // Only `danger` removes the defaults, and never a limit the policy sets.
    let bare = Host::new(capgate::danger::no_default_limits(HostConfig::new())).unwrap();
    assert_eq!(bare.limits(&policy, "plain").unwrap().timeout, None);
    assert_eq!(bare.limits(&policy, "plain").unwrap().fuel, None);
    assert_eq!(bare.limits(&policy, "own").unwrap().fuel, Some(5000));
    assert!(host.limits(&policy, "nobody").is_none());
}

#[test]
fn the_library_refuses_a_compilation_cache_others_can_write() {
    use std::os::unix::fs::PermissionsExt as _;
    let sb = Sandbox::new();
    let open = sb.path("open-cache");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    match Host::new(HostConfig::new().cache_dir(&open)) {
        Err(e @ capgate::RunError::Cache { .. }) => {
            assert!(
                e.to_string().contains("its mode is 777; it must be 700"),
                "{e}"
            );
        }
        other => panic!("expected the cache to be refused, got {other:?}"),
    }
    // Control: a private directory (created 0700 when missing) is accepted.
    let private = sb.path("private-cache");
    Host::new(HostConfig::new().cache_dir(&private)).unwrap();
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}
