//! Property tests, each against a small reference model written independently of the
//! implementation: socket and name patterns, whole-policy decisions, paths through the
//! filesystem adapter, and the audit chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use capgate::audit::{self, AuditLevel, Auditor, Checkpointer, LogReader, MemorySink};
use capgate::authz::{Action, Request};
use capgate::policy::pattern::{NamePattern, SocketPattern};
use capgate::signing::TrustRoot;
use common::{Sandbox, run_probe, signed_probe_policy};
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;

// ---- socket patterns ------------------------------------------------------------------------

/// The model of a socket pattern's host: what it accepts, as integers and masks.
#[derive(Debug, Clone, Copy)]
enum ModelHost {
    Any,
    V4 { net: u32, prefix: u8 },
    V6 { net: u128, prefix: u8 },
}

fn mask4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn mask6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    }
}

impl ModelHost {
    fn text(&self) -> String {
        match *self {
            Self::Any => "*".into(),
            Self::V4 { net, prefix: 32 } => Ipv4Addr::from(net).to_string(),
            Self::V4 { net, prefix } => format!("{}/{prefix}", Ipv4Addr::from(net)),
            Self::V6 { net, prefix: 128 } => format!("[{}]", Ipv6Addr::from(net)),
            Self::V6 { net, prefix } => format!("[{}/{prefix}]", Ipv6Addr::from(net)),
        }
    }

    fn accepts(&self, ip: IpAddr) -> bool {
        // IPv4-mapped IPv6 addresses are the IPv4 address they carry.
        let ip = match ip {
            IpAddr::V6(v6) => match v6.octets() {
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d] => {
                    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
                }
                _ => ip,
            },
            v4 => v4,
        };
        match (*self, ip) {
            (Self::Any, _) => true,
            (Self::V4 { net, prefix }, IpAddr::V4(a)) => u32::from(a) & mask4(prefix) == net,
            (Self::V6 { net, prefix }, IpAddr::V6(a)) => u128::from(a) & mask6(prefix) == net,
            _ => false,
        }
    }
}

fn model_host() -> impl Strategy<Value = ModelHost> {
    prop_oneof![
        1 => Just(ModelHost::Any),
        4 => (any::<u32>(), 0u8..=32).prop_map(|(a, p)| ModelHost::V4 { net: a & mask4(p), prefix: p }),
        // Keep IPv6 networks away from the IPv4-mapped range, which the parser folds to IPv4.
        2 => (any::<u128>(), 0u8..=128)
            .prop_map(|(a, p)| (a | (1u128 << 127)) & mask6(p))
            .prop_flat_map(|net| (Just(net), 1u8..=128))
            .prop_map(|(net, p)| ModelHost::V6 { net: net & mask6(p), prefix: p }),
    ]
}

fn model_ports() -> impl Strategy<Value = Option<(u16, u16)>> {
    prop_oneof![
        1 => Just(None),
        3 => any::<u16>().prop_map(|p| Some((p, p))),
        2 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Some((a.min(b), a.max(b)))),
    ]
}

/// Addresses near the pattern's network (so matches are common) and anywhere.
fn address_for(host: &ModelHost) -> BoxedStrategy<IpAddr> {
    let anywhere = prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
        any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
    ];
    match *host {
        ModelHost::V4 { net, prefix } => prop_oneof![
            2 => any::<u32>().prop_map(move |r| IpAddr::V4((net | (r & !mask4(prefix))).into())),
            1 => any::<u32>().prop_map(move |r| {
                IpAddr::V6(Ipv4Addr::from(net | (r & !mask4(prefix))).to_ipv6_mapped())
            }),
            1 => anywhere,
        ]
        .boxed(),
        ModelHost::V6 { net, prefix } => prop_oneof![
            2 => any::<u128>().prop_map(move |r| IpAddr::V6((net | (r & !mask6(prefix))).into())),
            1 => anywhere,
        ]
        .boxed(),
        ModelHost::Any => anywhere.boxed(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn socket_patterns_agree_with_the_model(
        (host, ports, udp, addrs) in (model_host(), model_ports(), any::<bool>())
            .prop_flat_map(|(h, p, u)| {
                let a = proptest::collection::vec((address_for(&h), any::<u16>()), 1..16);
                (Just(h), Just(p), Just(u), a)
            })
    ) {
        let scheme = if udp { "udp" } else { "tcp" };
        let port_text = match ports {
            None => "*".to_owned(),
            Some((a, b)) if a == b => a.to_string(),
            Some((a, b)) => format!("{a}-{b}"),
        };
        let text = format!("{scheme}://{}:{port_text}", host.text());
        let pattern: SocketPattern = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        for (ip, port) in addrs {
            // Bias ports into the range half the time.
            let port = match ports { Some((a, b)) if port % 2 == 0 => a + (port % (b - a).saturating_add(1).max(1)), _ => port };
            let want = host.accepts(ip) && ports.is_none_or(|(a, b)| (a..=b).contains(&port));
            let addr = SocketAddr::new(ip, port);
            prop_assert_eq!(pattern.matches(addr), want, "{} vs {}", text, addr);
        }
        // Display is a fixed point and parses back to the same pattern.
        let shown = pattern.to_string();
        let again: SocketPattern = shown.parse().unwrap();
        prop_assert_eq!(&again, &pattern);
        prop_assert_eq!(again.to_string(), shown);
    }
}

// ---- name patterns --------------------------------------------------------------------------

fn labels() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        prop::sample::select(vec!["a", "b", "ab", "x-y", "c0", "svc"]).prop_map(str::to_owned),
        1..5,
    )
}

/// Upper-cases some letters and maybe adds the root dot: the same name to DNS.
fn respell(name: &str, mask: u64, dot: bool) -> String {
    let mut s: String = name
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    if dot {
        s.push('.');
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn name_patterns_agree_with_the_model(
        kind in 1u8..3,
        pat in labels(),
        names in proptest::collection::vec((labels(), any::<u64>(), any::<bool>()), 1..12),
    ) {
        let pattern_text = match kind {
            1 => pat.join("."),
            _ => format!("*.{}", pat.join(".")),
        };
        let pattern: NamePattern = pattern_text.parse().unwrap();
        let mut candidates = names;
        // Names built from the pattern, so matches are common.
        candidates.push((pat.clone(), 0, false));
        candidates.push(([vec!["q".to_owned()], pat.clone()].concat(), u64::MAX, true));
        candidates.push(([vec!["q".to_owned(), "r".to_owned()], pat.clone()].concat(), 0, false));
        for (labels, mask, dot) in candidates {
            let want = match kind {
                1 => labels == pat,
                _ => labels.len() == pat.len() + 1 && labels[1..] == pat[..],
            };
            let name = respell(&labels.join("."), mask, dot);
            prop_assert_eq!(pattern.matches(&name), want, "{} vs {}", pattern_text, name);
        }
        prop_assert_eq!(pattern.to_string().parse::<NamePattern>().unwrap().to_string(), pattern.to_string());
    }
}

// ---- whole-policy decisions -----------------------------------------------------------------

/// A generated grant: `tcp://10.0.0.{a}/{prefix}:{lo}-{hi}`, or a lookup name.
#[derive(Debug, Clone)]
struct Grant {
    a: u8,
    prefix: u8,
    lo: u16,
    hi: u16,
}

fn grants() -> impl Strategy<Value = Vec<Grant>> {
    proptest::collection::vec(
        (
            0u8..8,
            prop::sample::select(vec![29u8, 30, 31, 32]),
            1u16..6,
            0u16..3,
        )
            .prop_map(|(a, prefix, lo, w)| Grant {
                a: a & (mask4(prefix) as u8),
                prefix,
                lo,
                hi: lo + w,
            }),
        0..5,
    )
}

proptest! {
    // Each case compiles a policy: fewer cases, each with many requests.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn decisions_agree_with_the_model_and_nothing_outside_a_grant_is_allowed(
        connect in grants(),
        names in proptest::collection::btree_set(prop::sample::select(vec!["a.internal", "b.internal", "c.example"]), 0..3),
        forbid_port in proptest::option::of(1u16..8),
        forbid_name in proptest::option::of(prop::sample::select(vec!["a.internal", "c.example"])),
        permit_port in proptest::option::of(1u16..8),
        requests in proptest::collection::vec((0u8..8, 1u16..8), 24),
    ) {
        let sb = Sandbox::new();
        sb.write("app.wasm", b"\0asm never compiled here");
        let mut rules = String::new();
        if let Some(p) = forbid_port {
            rules.push_str(&format!("@id(\"no-port-{p}\")\nforbid (principal, action == Action::\"net.connect\", resource) when {{ context.port == {p} }};\n"));
        }
        if let Some(n) = forbid_name {
            rules.push_str(&format!("@id(\"no-{n}\")\nforbid (principal, action == Action::\"net.lookup\", resource) when {{ resource.name == \"{n}\" }};\n"));
        }
        if let Some(p) = permit_port {
            rules.push_str(&format!("@id(\"yes-port-{p}\")\npermit (principal, action == Action::\"net.connect\", resource) when {{ context.port == {p} && context.ip.isInRange(ip(\"10.0.0.0/29\")) }};\n"));
        }
        sb.write("rules.cedar", &rules);
        let connect_yaml: Vec<String> = connect
            .iter()
            .map(|g| format!("tcp://10.0.0.{}/{}:{}-{}", g.a, g.prefix, g.lo, g.hi))
            .collect();
        let lookup_yaml: Vec<&str> = names.iter().copied().collect();
        let yaml = format!(
            "capgate: 1\nname: generated\nversion: 1\n{}components:\n  app:\n    component: app.wasm\n    network:\n      connect: [{}]\n      lookup: [{}]\n",
            if rules.is_empty() { String::new() } else { "rules: [rules.cedar]\n".into() },
            connect_yaml.join(", "),
            lookup_yaml.join(", "),
        );
        let policy = capgate::danger::load_unsigned_policy(&sb.write("policy.yaml", &yaml))
            .map_err(|e| TestCaseError::fail(format!("{yaml}\n{e}")))?;
        let authority = policy.authority();
        for (host, port) in requests {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, host)), port);
            let granted: Vec<String> = connect.iter().enumerate()
                .filter(|(_, g)| {
                    u32::from(Ipv4Addr::new(10, 0, 0, host)) & mask4(g.prefix)
                        == u32::from(Ipv4Addr::new(10, 0, 0, g.a))
                        && (g.lo..=g.hi).contains(&port)
                })
                .map(|(i, _)| format!("app.network.connect[{i}]"))
                .collect();
            let forbidden = forbid_port == Some(port);
            let permitted = permit_port == Some(port) && host < 8;
            let request = Request::Socket { action: Action::NetConnect, addr };
            let d = authority.decide("app", &request);
            prop_assert_eq!(d.allowed, (permitted || !granted.is_empty()) && !forbidden, "{} under\n{}", addr, yaml);
            if d.allowed {
                let mut want = granted.clone();
                if permitted {
                    want.push(format!("yes-port-{port}"));
                    want.sort();
                }
                prop_assert_eq!(&d.reasons, &want);
            } else if forbidden && (permitted || !granted.is_empty()) {
                prop_assert_eq!(d.reasons.clone(), vec![format!("no-port-{port}")]);
            }
            // Grants matched natively and rules by Cedar decide exactly as Cedar does over the
            // grants' permits and the rules together.
            prop_assert_eq!(d, authority.decide_reference("app", &request), "{} under\n{}", addr, yaml);
            // The same request for another action is never allowed by a connect grant.
            let bind = authority.decide("app", &Request::Socket { action: Action::NetBind, addr });
            prop_assert!(!bind.allowed);
        }
        for name in ["a.internal", "b.internal", "c.example", "d.example", "a.internal.evil"] {
            let want = names.contains(name) && forbid_name != Some(name);
            let request = Request::Lookup { name: name.into() };
            let d = authority.decide("app", &request);
            prop_assert_eq!(d.allowed, want, "{} under\n{}", name, yaml);
            prop_assert_eq!(d, authority.decide_reference("app", &request), "{} under\n{}", name, yaml);
        }
    }
}

// ---- paths through the filesystem adapter ---------------------------------------------------

#[test]
fn generated_paths_never_resolve_outside_the_mount_or_into_a_forbidden_subtree() {
    let sb = Sandbox::new();
    sb.write("outside/secret.txt", "OUTSIDE");
    sb.write("mount/a.txt", "in-a");
    sb.write("mount/sub/b.txt", "in-b");
    sb.write("mount/private/p.txt", "PRIVATE");
    let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, sb.path(at)).unwrap();
    link("..", "mount/up");
    link("../outside", "mount/out");
    link("/etc", "mount/etc");
    link("../private", "mount/sub/back");
    link("private/p.txt", "mount/direct");
    link("sub", "mount/s");
    link("loop", "mount/loop");
    sb.write(
        "rules.cedar",
        "@id(\"no-private\")\nforbid (principal, action == Action::\"fs.read\", resource) when { resource.path like \"/m/private/*\" };\n",
    );
    signed_probe_policy(
        &sb,
        "capgate: 1\nname: paths\nversion: 1\nrules: [rules.cedar]\ncomponents:\n  probe:\n    component: probe.wasm\n    files: [{ host: mount, guest: /m, access: read-only }]\n",
    );

    // Paths from `..`, `.`, names and symlinks, generated with a fixed seed so the table is
    // the same on every run.
    let parts = [
        "..",
        ".",
        "a.txt",
        "sub",
        "b.txt",
        "private",
        "p.txt",
        "up",
        "out",
        "etc",
        "back",
        "direct",
        "s",
        "loop",
        "secret.txt",
        "mount",
        "outside",
        "passwd",
    ];
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    // A walk of 0-5 steps, then a file name at the end (most walks should reach a file).
    let strategy = (
        proptest::collection::vec(prop::sample::select(parts.to_vec()), 0..6),
        prop::sample::select(vec![
            "a.txt",
            "b.txt",
            "p.txt",
            "secret.txt",
            "passwd",
            "direct",
        ]),
    );
    let mut paths: Vec<String> = (0..1500)
        .map(|_| {
            let (walk, file) = strategy.new_tree(&mut runner).unwrap().current();
            let mut all = walk;
            all.push(file);
            format!("/m/{}", all.join("/"))
        })
        .collect();
    // Controls: reads that must work.
    paths.extend(["/m/a.txt", "/m/sub/b.txt", "/m/s/b.txt", "/m/sub/../a.txt"].map(String::from));

    let mut args = vec!["read-each"];
    args.extend(paths.iter().map(String::as_str));
    let r = run_probe(&sb, "probe", &args);
    r.expect(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), paths.len(), "{}", r.stderr);
    let mut read = 0;
    for (path, line) in paths.iter().zip(&lines) {
        assert!(
            !line.contains("OUTSIDE") && !line.contains("PRIVATE") && !line.contains("root:"),
            "`{path}` escaped: {line}"
        );
        if line.starts_with("ok:") {
            read += 1;
            assert!(
                line.contains("in-a") || line.contains("in-b"),
                "`{path}`: {line}"
            );
        }
    }
    for (i, want) in ["in-a", "in-b", "in-b", "in-a"].iter().enumerate() {
        let line = lines[lines.len() - 4 + i];
        assert!(
            line.contains(want),
            "control {}: {line}",
            paths[paths.len() - 4 + i]
        );
    }
    let refused = lines
        .iter()
        .filter(|l| l.contains("PermissionDenied"))
        .count();
    eprintln!(
        "{} generated paths: {read} read, {refused} refused, the rest missing or invalid",
        paths.len()
    );
    // The generator reached files often enough for the property to mean something.
    assert!(read >= 30, "only {read} generated paths could be read");
    // And every private file is really there (the denials are the rule, not a missing file).
    assert_eq!(
        std::fs::read_to_string(sb.path("mount/private/p.txt")).unwrap(),
        "PRIVATE"
    );
}

// ---- the audit chain ------------------------------------------------------------------------

fn sealed_log() -> (Sandbox, Vec<u8>, TrustRoot) {
    let sb = Sandbox::new();
    sb.keys(&["auditor"]);
    sb.write(
        "trust.yaml",
        "capgate-trust: 1\nkeys: { auditor: keys/auditor.pub }\nroles:\n  audit: { keys: [auditor], threshold: 1 }\n",
    );
    sb.write("app.wasm", b"\0asm");
    let policy = capgate::danger::load_unsigned_policy(&sb.write(
        "policy.yaml",
        "capgate: 1\nname: chain\nversion: 1\ncomponents:\n  app:\n    component: app.wasm\n    network: { lookup: [a.internal] }\n",
    ))
    .unwrap();
    let key = capgate::signing::SecretKey::load(&sb.path("keys/auditor.key")).unwrap();
    let sink = std::sync::Arc::new(MemorySink::new(Some(Checkpointer::new(key, 4))));
    let auditor = Auditor::new(sink.clone()).level(AuditLevel::All);
    for name in [
        "a.internal",
        "b.internal",
        "a.internal",
        "c",
        "a.internal",
        "d",
        "e",
    ] {
        common::decide_and_record(
            &auditor,
            &policy,
            "app",
            &Request::Lookup { name: name.into() },
        );
    }
    auditor.close().unwrap();
    let trust = TrustRoot::load(&sb.path("trust.yaml")).unwrap();
    (sb, sink.bytes(), trust)
}

fn verify_bytes(bytes: Vec<u8>, trust: &TrustRoot) -> Result<audit::Verified, audit::Broken> {
    audit::verify_lines(
        LogReader::from_reader(Path::new("log"), std::io::Cursor::new(bytes)),
        Some(trust),
        false,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_single_byte_change_to_a_sealed_log_is_detected(
        at in any::<proptest::sample::Index>(),
        xor in 1u8..=255,
    ) {
        thread_local! {
            static LOG: (Sandbox, Vec<u8>, TrustRoot) = sealed_log();
        }
        LOG.with(|(_, bytes, trust)| {
            // Control: the untouched log verifies.
            prop_assert!(verify_bytes(bytes.clone(), trust).is_ok());
            let mut changed = bytes.clone();
            let i = at.index(changed.len());
            changed[i] ^= xor;
            prop_assert!(
                verify_bytes(changed.clone(), trust).is_err(),
                "byte {} changed (0x{:02x} -> 0x{:02x}) and the log still verifies:\n{}",
                i, bytes[i], changed[i], String::from_utf8_lossy(&changed)
            );
            Ok(())
        })?;
    }
}
