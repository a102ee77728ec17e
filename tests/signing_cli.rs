//! Signing and verification through the real `capgate` binary: round trips, the tamper table,
//! thresholds, expiry, rollback, openssl interop and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Sandbox, flip_byte};

const TRUST: &str = "capgate-trust: 1
keys:
  release: keys/release.pub
  alice: keys/alice.pub
  bob: keys/bob.pub
  carol: keys/carol.pub
roles:
  policy: { keys: [alice, bob, carol], threshold: 2 }
  artifact: { keys: [release], threshold: 1 }
";

fn policy(name: &str, version: u32, extra: &str) -> String {
    format!(
        "capgate: 1\nname: {name}\nversion: {version}\n{extra}components:\n  app:\n    component: app.wasm\n"
    )
}

/// Keys, a trust root, a signed artifact and a policy (with a rules file) signed by two keys.
fn signed_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.keys(&["release", "alice", "bob", "carol"]);
    sb.write("trust.yaml", TRUST);
    sb.write(
        "app.wasm",
        b"\0asm\x0d\0\x01\0 not really a component, but signed bytes",
    );
    sb.write(
        "extra.cedar",
        "@id(\"x\") forbid(principal, action, resource);\n",
    );
    sb.write("policy.yaml", policy("demo", 1, "rules: [extra.cedar]\n"));
    sb.capgate(["sign", "artifact", "app.wasm", "--key", "keys/release.key"])
        .expect(0);
    for k in ["alice", "bob"] {
        sb.capgate([
            "sign",
            "policy",
            "policy.yaml",
            "--key",
            &format!("keys/{k}.key"),
        ])
        .expect(0);
    }
    sb
}

fn verify_artifact(sb: &Sandbox) -> common::Run {
    sb.capgate(["verify", "artifact", "app.wasm", "--trust", "trust.yaml"])
}

fn verify_policy(sb: &Sandbox) -> common::Run {
    sb.capgate(["verify", "policy", "policy.yaml", "--trust", "trust.yaml"])
}

#[test]
fn artifact_round_trip() {
    let sb = signed_sandbox();
    verify_artifact(&sb)
        .expect(0)
        .stdout_has("signed by release");
}

#[test]
fn policy_bundle_round_trip() {
    let sb = signed_sandbox();
    verify_policy(&sb)
        .expect(0)
        .stdout_has("policy `demo` version 1")
        .stdout_has("signed by alice, bob")
        .stdout_has("covers 1 rules file");
}

#[test]
fn tamper_table() {
    struct Case {
        name: &'static str,
        tamper: fn(&Sandbox),
        verify: fn(&Sandbox) -> common::Run,
        message: &'static str,
    }
    let cases = [
        Case {
            name: "one byte of the artifact",
            tamper: |sb| flip_byte(&sb.path("app.wasm"), 10),
            verify: verify_artifact,
            message: "app.wasm: content does not match its signature",
        },
        Case {
            name: "one byte of the policy",
            tamper: |sb| flip_byte(&sb.path("policy.yaml"), 20),
            verify: verify_policy,
            message: "policy.yaml: content does not match its signature",
        },
        Case {
            name: "one byte of a rules file",
            tamper: |sb| flip_byte(&sb.path("extra.cedar"), 3),
            verify: verify_policy,
            message: "extra.cedar: content does not match its signature",
        },
        Case {
            name: "one byte of the signature",
            tamper: |sb| {
                edit_sig(&sb.path("app.wasm.sig"), |e| {
                    use base64::Engine as _;
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let mut raw = b64.decode(e["sig"].as_str().unwrap()).unwrap();
                    raw[5] ^= 1;
                    e["sig"] = b64.encode(raw).into();
                })
            },
            verify: verify_artifact,
            message: "signature by `release` (key id",
        },
        Case {
            name: "one hex digit of the key id",
            tamper: |sb| {
                edit_sig(&sb.path("app.wasm.sig"), |e| {
                    let id = e["keyid"].as_str().unwrap();
                    let flipped = if id.starts_with('0') { "1" } else { "0" };
                    e["keyid"] = format!("{flipped}{}", &id[1..]).into();
                })
            },
            verify: verify_artifact,
            message: "is not in the trust root",
        },
        Case {
            name: "truncated artifact",
            tamper: |sb| {
                let b = sb.read("app.wasm");
                sb.write("app.wasm", &b[..b.len() / 2]);
            },
            verify: verify_artifact,
            message: "bytes); the file changed after signing",
        },
        Case {
            name: "artifact signature presented for a policy",
            tamper: |sb| {
                std::fs::copy(sb.path("app.wasm.sig"), sb.path("policy.yaml.sig")).unwrap();
            },
            verify: verify_policy,
            message: "this signature is for an artifact, not a policy",
        },
        Case {
            name: "policy signature presented for an artifact",
            tamper: |sb| {
                std::fs::copy(sb.path("policy.yaml.sig"), sb.path("app.wasm.sig")).unwrap();
            },
            verify: verify_artifact,
            message: "this signature is for a policy, not an artifact",
        },
        Case {
            name: "payload type edited to match",
            tamper: |sb| {
                std::fs::copy(sb.path("policy.yaml.sig"), sb.path("app.wasm.sig")).unwrap();
                edit_top(&sb.path("app.wasm.sig"), |v| {
                    v["payloadType"] = "application/vnd.capgate.artifact.v1+json".into();
                });
            },
            verify: verify_artifact,
            message: "content does not match its signature",
        },
        Case {
            name: "signature file missing",
            tamper: |sb| std::fs::remove_file(sb.path("app.wasm.sig")).unwrap(),
            verify: verify_artifact,
            message: "not signed",
        },
        Case {
            name: "truncated signature file",
            tamper: |sb| {
                let b = sb.read("app.wasm.sig");
                sb.write("app.wasm.sig", &b[..b.len() / 2]);
            },
            verify: verify_artifact,
            message: "app.wasm.sig:",
        },
    ];
    for case in cases {
        let sb = signed_sandbox();
        // Positive control: the untouched files verify.
        (case.verify)(&sb).expect(0);
        (case.tamper)(&sb);
        let run = (case.verify)(&sb);
        let want = if case.name == "truncated signature file" {
            65
        } else {
            77
        };
        assert_eq!(
            run.code, want,
            "{}: exit {}\n{}",
            case.name, run.code, run.stderr
        );
        assert!(
            run.stderr.contains(case.message),
            "{}: stderr lacks {:?}:\n{}",
            case.name,
            case.message,
            run.stderr
        );
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "{}: one line expected:\n{}",
            case.name,
            run.stderr
        );
    }
}

fn edit_top(path: &std::path::Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn edit_sig(path: &std::path::Path, f: impl FnOnce(&mut serde_json::Value)) {
    edit_top(path, |v| f(&mut v["signatures"][0]));
}

#[test]
fn threshold_two_of_three() {
    let sb = Sandbox::new();
    sb.keys(&["release", "alice", "bob", "carol"]);
    sb.write("trust.yaml", TRUST);
    sb.write("policy.yaml", policy("demo", 1, ""));
    sb.capgate(["sign", "policy", "policy.yaml", "--key", "keys/alice.key"])
        .expect(0);
    verify_policy(&sb).expect(77).stderr_has(
        "role `policy` needs 2 valid signatures by {`alice`, `bob`, `carol`}; found 1 (`alice`)",
    );

    // The same key twice counts once.
    edit_top(&sb.path("policy.yaml.sig"), |v| {
        let first = v["signatures"][0].clone();
        v["signatures"].as_array_mut().unwrap().push(first);
    });
    verify_policy(&sb)
        .expect(77)
        .stderr_has("key `alice` signed more than once");

    // A key of another role does not count either.
    std::fs::remove_file(sb.path("policy.yaml.sig")).unwrap();
    for k in ["alice", "release"] {
        sb.capgate([
            "sign",
            "policy",
            "policy.yaml",
            "--key",
            &format!("keys/{k}.key"),
        ])
        .expect(0);
    }
    verify_policy(&sb)
        .expect(77)
        .stderr_has("key `release` is trusted, but not for this");

    sb.capgate(["sign", "policy", "policy.yaml", "--key", "keys/carol.key"])
        .expect(0);
    verify_policy(&sb)
        .expect(0)
        .stdout_has("signed by alice, carol");
}

fn sign_policy_by_two(sb: &Sandbox) {
    let _ = std::fs::remove_file(sb.path("policy.yaml.sig"));
    for k in ["alice", "bob"] {
        sb.capgate([
            "sign",
            "policy",
            "policy.yaml",
            "--key",
            &format!("keys/{k}.key"),
        ])
        .expect(0);
    }
}

#[test]
fn expiry_and_rollback() {
    let sb = Sandbox::new();
    sb.keys(&["release", "alice", "bob", "carol"]);
    sb.write("trust.yaml", TRUST);

    sb.write(
        "policy.yaml",
        policy("demo", 2, "expires: 2001-01-01T00:00:00Z\n"),
    );
    sign_policy_by_two(&sb);
    verify_policy(&sb)
        .expect(77)
        .stderr_has("policy `demo` expired at 2001-01-01T00:00:00Z");

    sb.write(
        "policy.yaml",
        policy("demo", 2, "expires: 2999-01-01T00:00:00Z\n"),
    );
    sign_policy_by_two(&sb);
    verify_policy(&sb).expect(0);

    sb.write("policy.yaml", policy("demo", 1, ""));
    sign_policy_by_two(&sb);
    verify_policy(&sb).expect(77).stderr_has(
        "policy `demo` version 1 is older than version 2, which this host already accepted",
    );

    sb.write("policy.yaml", policy("demo", 3, ""));
    sign_policy_by_two(&sb);
    verify_policy(&sb).expect(0);

    // Remembered across runs: version 2 is now refused too.
    sb.write("policy.yaml", policy("demo", 2, ""));
    sign_policy_by_two(&sb);
    verify_policy(&sb)
        .expect(77)
        .stderr_has("older than version 3");

    // Another policy name has its own history.
    sb.write("policy.yaml", policy("other", 1, ""));
    sign_policy_by_two(&sb);
    verify_policy(&sb).expect(0);
}

#[test]
fn signing_changed_content_does_not_mix_signatures() {
    let sb = signed_sandbox();
    sb.write("app.wasm", b"rebuilt");
    sb.capgate(["sign", "artifact", "app.wasm", "--key", "keys/release.key"])
        .expect(65)
        .stderr_has("holds 1 signature over different content")
        .stderr_has("hint: sign with `--replace`");
    sb.capgate([
        "sign",
        "artifact",
        "app.wasm",
        "--key",
        "keys/release.key",
        "--replace",
    ])
    .expect(0)
    .stdout_has("discarded 1 signature over the old content");
    verify_artifact(&sb).expect(0);
}

#[test]
fn an_edited_policy_is_signed_again_with_replace_and_needs_every_co_signer_again() {
    let sb = signed_sandbox();
    verify_policy(&sb).expect(0);
    sb.write("policy.yaml", policy("demo", 2, "rules: [extra.cedar]\n"));
    let sign = |key: &str, replace: bool| {
        let key = format!("keys/{key}.key");
        let mut argv = vec!["sign", "policy", "policy.yaml", "--key", &key];
        if replace {
            argv.push("--replace");
        }
        sb.capgate(argv)
    };
    // Without `--replace`, the two signatures over version 1 are not dropped silently.
    sign("alice", false)
        .expect(65)
        .stderr_has("holds 2 signatures over different content")
        .stderr_has("--replace");
    verify_policy(&sb)
        .expect(77)
        .stderr_has("content does not match its signature");
    // With it, alice's signature starts a new file: one of the two the policy role needs.
    sign("alice", true)
        .expect(0)
        .stdout_has("holds 1 signature")
        .stdout_has("discarded 2 signatures over the old content; co-signers must sign again");
    verify_policy(&sb)
        .expect(77)
        .stderr_has("needs 2 valid signatures by {`alice`, `bob`, `carol`}; found 1 (`alice`)");
    // Bob signs the new content (no `--replace` needed: the file covers it now).
    sign("bob", false)
        .expect(0)
        .stdout_has("holds 2 signatures");
    verify_policy(&sb).expect(0).stdout_has("version 2");
}

#[test]
fn exit_codes_and_messages_for_bad_input() {
    let sb = signed_sandbox();
    sb.capgate(["verify", "artifact", "nope.wasm", "--trust", "trust.yaml"])
        .expect(66)
        .stderr_has("nope.wasm: no such file");
    sb.capgate(["verify", "artifact", "app.wasm", "--trust", "missing.yaml"])
        .expect(66);
    sb.capgate(["verify", "artifact", "app.wasm"]).expect(64);
    sb.capgate(["frobnicate"]).expect(64);
    sb.write("bad-trust.yaml", "capgate-trust: 1\nkeys:\n  alice: keys/alice.pub\nroles:\n  policy: { keys: [alice, mallory], threshold: 1 }\n");
    sb.capgate([
        "verify",
        "artifact",
        "app.wasm",
        "--trust",
        "bad-trust.yaml",
    ])
    .expect(65)
    .stderr_has("bad-trust.yaml:5:")
    .stderr_has("role `policy` names key `mallory`, which `keys` does not define");
    sb.write("typo-trust.yaml", "capgate-trust: 1\nkeys: {}\nrols: {}\n");
    sb.capgate([
        "verify",
        "artifact",
        "app.wasm",
        "--trust",
        "typo-trust.yaml",
    ])
    .expect(65)
    .stderr_has("typo-trust.yaml:3:1: unknown field `rols`")
    .stderr_has("did you mean `roles`?");
    sb.write(
        "notakey.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    sb.capgate(["sign", "artifact", "app.wasm", "--key", "notakey.pem"])
        .expect(65)
        .stderr_has("notakey.pem: not an Ed25519 private key");
    sb.capgate(["keygen", "--out", "keys/alice"])
        .expect(73)
        .stderr_has("already exists");
    let json = sb.capgate([
        "--log-format",
        "json",
        "verify",
        "artifact",
        "nope.wasm",
        "--trust",
        "trust.yaml",
    ]);
    json.expect(66);
    let v: serde_json::Value = serde_json::from_str(json.stderr.trim()).unwrap();
    assert_eq!(v["exit"], 66);
    assert_eq!(v["class"], "missing-input");
}

#[cfg(unix)]
#[test]
fn keygen_writes_owner_only_private_key() {
    use std::os::unix::fs::PermissionsExt as _;
    let sb = Sandbox::new();
    sb.keys(&["k"]);
    let mode = std::fs::metadata(sb.path("keys/k.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = String::from_utf8(sb.read("keys/k.key")).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
    let text = String::from_utf8(sb.read("keys/k.pub")).unwrap();
    assert!(text.starts_with("-----BEGIN PUBLIC KEY-----"), "{text}");
}

fn openssl() -> Option<std::process::Command> {
    match std::process::Command::new("openssl")
        .arg("version")
        .output()
    {
        Ok(o) if o.status.success() => Some(std::process::Command::new("openssl")),
        _ => {
            eprintln!("SKIPPED: openssl is not installed, so interop with it was not tested");
            None
        }
    }
}

#[test]
fn openssl_key_signs_through_capgate() {
    let Some(mut genpkey) = openssl() else { return };
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("keys")).unwrap();
    assert!(
        genpkey
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(sb.path("keys/release.key"))
            .status()
            .unwrap()
            .success()
    );
    let mut pubout = openssl().unwrap();
    assert!(
        pubout
            .args(["pkey", "-pubout", "-in"])
            .arg(sb.path("keys/release.key"))
            .arg("-out")
            .arg(sb.path("keys/release.pub"))
            .status()
            .unwrap()
            .success()
    );
    sb.write("trust.yaml", "capgate-trust: 1\nkeys: { release: keys/release.pub }\nroles: { artifact: { keys: [release], threshold: 1 } }\n");
    sb.write("app.wasm", b"payload");
    sb.capgate(["sign", "artifact", "app.wasm", "--key", "keys/release.key"])
        .expect(0);
    verify_artifact(&sb)
        .expect(0)
        .stdout_has("signed by release");
}

#[test]
fn capgate_signature_verifies_with_openssl() {
    use base64::Engine as _;
    let Some(mut check_key) = openssl() else {
        return;
    };
    let sb = signed_sandbox();
    // openssl reads capgate's private key file as it is.
    assert!(
        check_key
            .args(["pkey", "-noout", "-in"])
            .arg(sb.path("keys/release.key"))
            .status()
            .unwrap()
            .success()
    );

    let sig = capgate::signing::SignatureFile::load(&sb.path("app.wasm.sig")).unwrap();
    let pae = sig.signed_message(capgate::signing::PayloadKind::Artifact);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&sig.signatures[0].sig)
        .unwrap();
    sb.write("pae.bin", &pae);
    sb.write("sig.bin", raw);
    let verify = |sb: &Sandbox| {
        openssl()
            .unwrap()
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(sb.path("keys/release.pub"))
            .arg("-in")
            .arg(sb.path("pae.bin"))
            .arg("-sigfile")
            .arg(sb.path("sig.bin"))
            .output()
            .unwrap()
    };
    let ok = verify(&sb);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("Signature Verified Successfully"));
    // Negative control: openssl refuses the same signature over different bytes.
    flip_byte(&sb.path("pae.bin"), pae.len() - 3);
    assert!(!verify(&sb).status.success());
}

#[test]
fn a_changed_policy_under_an_accepted_version_is_refused() {
    let sb = Sandbox::new();
    common::signed_probe_policy(
        &sb,
        "capgate: 1\nname: same\nversion: 3\ncomponents:\n  probe:\n    component: probe.wasm\n",
    );
    common::run_probe(&sb, "probe", &["exit", "0"]).expect(0);
    // The attack: other content, the same version, signed by the same key.
    common::resign_policy(
        &sb,
        "capgate: 1\nname: same\nversion: 3\ncomponents:\n  probe:\n    component: probe.wasm\n    env: { X: y }\n",
    );
    common::run_probe(&sb, "probe", &["exit", "0"])
        .expect(77)
        .stderr_has(
            "policy `same` version 3 differs from the version 3 this host already accepted",
        );
    // Control: the same content again is accepted, and so is a higher version.
    common::resign_policy(
        &sb,
        "capgate: 1\nname: same\nversion: 3\ncomponents:\n  probe:\n    component: probe.wasm\n",
    );
    common::run_probe(&sb, "probe", &["exit", "0"]).expect(0);
    common::resign_policy(
        &sb,
        "capgate: 1\nname: same\nversion: 4\ncomponents:\n  probe:\n    component: probe.wasm\n    env: { X: y }\n",
    );
    common::run_probe(&sb, "probe", &["exit", "0"]).expect(0);
}
