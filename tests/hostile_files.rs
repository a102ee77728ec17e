//! Files capgate is pointed at cannot hang it, make it read without bound, or make it read
//! what an unsigned signature file names: every file read from a path is a regular file,
//! bounded, and a policy's file list is read only once its signature is checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Run, Sandbox, signed_probe_policy};

/// `capgate ARGS` in `sb`, killed (and the test failed) if it takes more than 20 seconds.
fn bounded(sb: &Sandbox, args: &[&str]) -> Run {
    let mut child = sb
        .command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`capgate {}` hung", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Run::from_output(child.wait_with_output().unwrap())
}

fn mkfifo(sb: &Sandbox, name: &str) {
    assert!(
        std::process::Command::new("mkfifo")
            .arg(sb.path(name))
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn an_unsigned_file_list_names_nothing_that_is_read() {
    let sb = Sandbox::new();
    signed_probe_policy(
        &sb,
        "capgate: 1\nname: p\nversion: 1\ncomponents:\n  probe:\n    component: probe.wasm\n",
    );
    // Control: the signed policy verifies.
    bounded(
        &sb,
        &["verify", "policy", "policy.yaml", "--trust", "trust.yaml"],
    )
    .expect(0);
    // The attack: add a FIFO and a host secret to the `.sig`'s file list, signature unchanged.
    mkfifo(&sb, "fifo");
    let mut sig: serde_json::Value = serde_json::from_slice(&sb.read("policy.yaml.sig")).unwrap();
    let entry = |path: &str| serde_json::json!({"path": path, "sha256": "0".repeat(64), "size": 1});
    sig["files"] = serde_json::json!([entry("fifo"), entry("/etc/passwd")]);
    sb.write("policy.yaml.sig", sig.to_string());
    let r = bounded(
        &sb,
        &["verify", "policy", "policy.yaml", "--trust", "trust.yaml"],
    );
    r.expect(77);
    // Refused on the signature, before either file was opened: no digest of them is shown.
    assert!(!r.stderr.contains("/etc/passwd"), "{}", r.stderr);
    assert!(!r.stderr.contains("fifo"), "{}", r.stderr);
}

#[test]
fn keys_components_and_logs_must_be_regular_files() {
    let sb = Sandbox::new();
    sb.keys(&["alice"]);
    mkfifo(&sb, "fifo");
    // A trust root whose key is a FIFO, or /dev/zero.
    for key in ["fifo", "/dev/zero"] {
        sb.write(
            "trust.yaml",
            format!("capgate-trust: 1\nkeys: {{ alice: {key} }}\nroles:\n  policy: {{ keys: [alice], threshold: 1 }}\n"),
        );
        bounded(
            &sb,
            &["verify", "policy", "policy.yaml", "--trust", "trust.yaml"],
        )
        .stderr_has("not a regular file");
    }
    // `inspect` of a FIFO or /dev/zero, and an audit log that is a FIFO.
    for file in ["fifo", "/dev/zero"] {
        bounded(&sb, &["inspect", file]).stderr_has("not a regular file");
    }
    bounded(&sb, &["audit", "verify", "fifo"]).stderr_has("not a regular file");
    // Control: with the real key file the trust root loads, and the run gets as far as the
    // (missing) policy.
    sb.write(
        "trust.yaml",
        "capgate-trust: 1\nkeys: { alice: keys/alice.pub }\nroles:\n  policy: { keys: [alice], threshold: 1 }\n",
    );
    let r = bounded(
        &sb,
        &["verify", "policy", "policy.yaml", "--trust", "trust.yaml"],
    );
    r.stderr_has("policy.yaml");
    assert!(!r.stderr.contains("regular"), "{}", r.stderr);
}
