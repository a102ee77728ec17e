//! Bad input everywhere: every CLI command, each untrusted file it reads replaced by a missing,
//! empty, truncated, huge, binary or wrong-kind file. Each must end with one short error on
//! stderr and a documented exit code: never a panic, a backtrace or a hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Run, Sandbox, signed_probe_policy};

/// The exit codes the README documents for failures.
const DOCUMENTED: [i32; 7] = [64, 65, 66, 69, 73, 74, 77];

struct Kind {
    name: &'static str,
    /// Writes the bad file at `path` (or leaves it missing), given a good file of the same role.
    make: fn(&Sandbox, &str, &[u8]),
}

fn kinds() -> Vec<Kind> {
    vec![
        Kind {
            name: "missing",
            make: |_, _, _| {},
        },
        Kind {
            name: "empty",
            make: |sb, p, _| {
                sb.write(p, b"");
            },
        },
        Kind {
            name: "truncated",
            make: |sb, p, good| {
                sb.write(p, &good[..good.len() / 2]);
            },
        },
        Kind {
            name: "huge",
            make: |sb, p, _| {
                // 24 MiB of text-like bytes, one long line.
                sb.write(p, vec![b'a'; 24 << 20]);
            },
        },
        Kind {
            name: "binary",
            make: |sb, p, _| {
                let bytes: Vec<u8> = (0..4096u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect();
                sb.write(p, bytes);
            },
        },
        Kind {
            name: "wrong kind",
            make: |sb, p, _| {
                // A PNG image where YAML, JSON, PEM or wasm is expected.
                let png = std::fs::read(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/examples/image-service/sample.png"
                ))
                .unwrap();
                sb.write(p, png);
            },
        },
        Kind {
            name: "wrong type of value",
            make: |sb, p, _| {
                sb.write(p, "capgate: \"one\"\nname: [1, 2]\nversion: -3\ncapgate-trust: {}\nkeys: 7\n{\"seq\": \"x\"}\n");
            },
        },
    ]
}

#[track_caller]
fn one_clear_error(r: &Run, what: &str) {
    assert!(
        DOCUMENTED.contains(&r.code),
        "{what}: exit {} is not a documented failure code\nstderr: {}",
        r.code,
        r.stderr
    );
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace", "thread '"] {
        assert!(
            !r.stderr.contains(bad),
            "{what}: `{bad}` on stderr:\n{}",
            r.stderr
        );
    }
    let lines = r
        .stderr
        .lines()
        .filter(|l| !l.starts_with("warning:"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "{what}: expected one short error, got {lines} lines:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.len() < 2000,
        "{what}: error too long:\n{}",
        r.stderr
    );
}

#[test]
fn every_command_gives_one_clear_error_for_every_kind_of_bad_file() {
    let sb = Sandbox::new();
    signed_probe_policy(
        &sb,
        "capgate: 1\nname: bad-input\nversion: 1\ncomponents:\n  probe:\n    component: probe.wasm\n",
    );
    // A good audit log to truncate, and good copies of every other kind of file.
    sb.capgate([
        "run",
        "--policy",
        "policy.yaml",
        "--trust",
        "trust.yaml",
        "--audit",
        "good.jsonl",
        "--",
        "lookup",
        "x.example",
    ]);
    let good = |p: &str| sb.read(p);
    let files = [
        ("policy", good("policy.yaml")),
        ("trust", good("trust.yaml")),
        ("sig", good("probe.wasm.sig")),
        ("key", good("keys/release.key")),
        ("wasm", good("probe.wasm")),
        ("log", good("good.jsonl")),
    ];
    // (name, the role of the bad file, argv with `BAD` for it)
    let commands: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "sign --key",
            "key",
            vec!["sign", "artifact", "probe.wasm", "--key", "BAD"],
        ),
        (
            "verify --trust",
            "trust",
            vec!["verify", "artifact", "probe.wasm", "--trust", "BAD"],
        ),
        (
            "verify artifact (signature file)",
            "sig",
            vec!["verify", "artifact", "copy.wasm", "--trust", "trust.yaml"],
        ),
        (
            "verify policy",
            "policy",
            vec!["verify", "policy", "BAD", "--trust", "trust.yaml"],
        ),
        ("policy check", "policy", vec!["policy", "check", "BAD"]),
        (
            "policy check --trust",
            "trust",
            vec!["policy", "check", "policy.yaml", "--trust", "BAD"],
        ),
        ("inspect", "wasm", vec!["inspect", "BAD"]),
        (
            "inspect --policy",
            "policy",
            vec![
                "inspect",
                "probe.wasm",
                "--policy",
                "BAD",
                "--component",
                "probe",
            ],
        ),
        (
            "run --policy",
            "policy",
            vec!["run", "--policy", "BAD", "--allow-unsigned"],
        ),
        (
            "run --trust",
            "trust",
            vec!["run", "--policy", "policy.yaml", "--trust", "BAD"],
        ),
        (
            "run --audit-key",
            "key",
            vec![
                "run",
                "--policy",
                "policy.yaml",
                "--trust",
                "trust.yaml",
                "--audit",
                "a.jsonl",
                "--audit-key",
                "BAD",
            ],
        ),
        (
            "serve --policy",
            "policy",
            vec![
                "serve",
                "--policy",
                "BAD",
                "--allow-unsigned",
                "--component",
                "probe",
                "--listen",
                "127.0.0.1:0",
            ],
        ),
        (
            "call --policy",
            "policy",
            vec!["call", "--policy", "BAD", "--allow-unsigned", "probe", "f"],
        ),
        ("audit verify", "log", vec!["audit", "verify", "BAD"]),
        (
            "audit verify --trust",
            "trust",
            vec!["audit", "verify", "good.jsonl", "--trust", "BAD"],
        ),
        ("audit query", "log", vec!["audit", "query", "BAD"]),
        ("audit summary", "log", vec!["audit", "summary", "BAD"]),
        (
            "audit replay --policy",
            "policy",
            vec![
                "audit",
                "replay",
                "good.jsonl",
                "--policy",
                "BAD",
                "--allow-unsigned",
            ],
        ),
    ];
    let mut runs = 0;
    for (name, role, argv) in &commands {
        let good_bytes = &files.iter().find(|(r, _)| r == role).unwrap().1;
        for kind in kinds() {
            // The bad file, named like a real one of its role.
            let bad = format!("bad-{}", role);
            let _ = std::fs::remove_file(sb.path(&bad));
            let _ = std::fs::remove_file(sb.path("copy.wasm.sig"));
            if *role == "sig" {
                std::fs::copy(sb.path("probe.wasm"), sb.path("copy.wasm")).unwrap();
                (kind.make)(&sb, "copy.wasm.sig", good_bytes);
            } else {
                (kind.make)(&sb, &bad, good_bytes);
            }
            let args: Vec<&str> = argv
                .iter()
                .map(|a| if *a == "BAD" { bad.as_str() } else { a })
                .collect();
            let r = sb.capgate(&args);
            let what = format!("{name} with a {} file", kind.name);
            if r.code == 0 {
                // Only a file that is still valid may be accepted: truncating a log at a line
                // boundary, say. Nothing else.
                panic!(
                    "{what}: accepted\nstdout: {}\nstderr: {}",
                    r.stdout, r.stderr
                );
            }
            one_clear_error(&r, &what);
            if kind.name == "missing" {
                // A missing signature is a trust failure (nothing is signed), not a missing
                // input: 77, as every refusal to trust.
                let want = if *role == "sig" { 77 } else { 66 };
                assert_eq!(r.code, want, "{what}: {}", r.stderr);
            }
            runs += 1;
        }
    }
    assert_eq!(runs, commands.len() * kinds().len());
}

#[test]
fn bad_command_lines_are_usage_errors() {
    let sb = Sandbox::new();
    for argv in [
        vec!["frobnicate"],
        vec!["run"],
        vec!["sign", "artifact"],
        vec![
            "serve",
            "--policy",
            "p.yaml",
            "--component",
            "x",
            "--listen",
            "not-an-address",
        ],
        vec!["audit", "query", "x.jsonl", "--since", "yesterday"],
        vec!["audit", "query", "x.jsonl", "--decision", "maybe"],
        vec![
            "run",
            "--policy",
            "p.yaml",
            "--allow-unsigned",
            "--log-format",
            "xml",
        ],
    ] {
        let r = sb.capgate(&argv);
        assert_eq!(r.code, 64, "{argv:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{argv:?}: {}", r.stderr);
    }
}
