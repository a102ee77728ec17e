//! Components and policy bundles through a real OCI registry (CNCF Distribution 2.8, started
//! on a loopback port per test): push, run from the registry, the offline second run,
//! tampered blobs, missing signatures, basic authentication and the exit codes of failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::registry::{PASSWORD, Registry, USER};
use common::{Run, Sandbox, guests};

const HELLO: &str = "hello from a capgate guest";

/// Keys, a trust root and the hello guest as `hello.wasm`, signed; the OCI cache is the
/// sandbox's own.
fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.keys(&["release", "alice"]);
    sb.write(
        "trust.yaml",
        "capgate-trust: 1\nkeys: { release: keys/release.pub, alice: keys/alice.pub }\nroles:\n  artifact: { keys: [release], threshold: 1 }\n  policy: { keys: [alice], threshold: 1 }\n",
    );
    std::fs::copy(guests::guest("hello"), sb.path("hello.wasm")).unwrap();
    sb.capgate([
        "sign",
        "artifact",
        "hello.wasm",
        "--key",
        "keys/release.key",
    ])
    .expect(0);
    sb
}

/// `capgate ARGS` with the sandbox's own OCI cache (`cache`) and `env`.
fn capgate(sb: &Sandbox, cache: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = sb.command(args);
    cmd.env("CAPGATE_OCI_CACHE", sb.path(cache));
    cmd.envs(env.iter().copied());
    Run::from_output(cmd.output().unwrap())
}

/// The `oci://…@sha256:…` a successful push printed.
fn pinned(r: &Run) -> String {
    let out = &r.stdout;
    let at = out.find("@sha256:").expect("a pinned reference");
    let start = out[..at].rfind("(oci://").unwrap() + 1;
    let end = at + out[at..].find(')').unwrap();
    out[start..end].to_owned()
}

/// A policy `name` running `hello` from `component`, with a rules file, signed.
fn signed_policy(sb: &Sandbox, component: &str) {
    sb.write(
        "rules/extra.cedar",
        "@id(\"no-http\")\nforbid (principal, action == Action::\"http.request\", resource);\n",
    );
    sb.write(
        "policy.yaml",
        format!("capgate: 1\nname: fleet\nversion: 1\nrules: [rules/extra.cedar]\ncomponents:\n  hello:\n    component: {component}\n"),
    );
    sb.capgate(["sign", "policy", "policy.yaml", "--key", "keys/alice.key"])
        .expect(0);
}

#[test]
fn a_component_and_a_policy_pushed_to_a_registry_run_from_it_and_a_second_run_by_digest_is_offline()
{
    let reg = Registry::start();
    let sb = sandbox();
    let pushed = capgate(
        &sb,
        "c",
        &[],
        &["push", "artifact", "hello.wasm", &reg.oci("demo/hello:v1")],
    );
    pushed.expect(0).stdout_has("1 signature");
    let component = pinned(&pushed);
    // The policy names the component by tag; the run resolves it.
    signed_policy(&sb, &reg.oci("demo/hello:v1"));
    let pushed = capgate(
        &sb,
        "c",
        &[],
        &["push", "policy", "policy.yaml", &reg.oci("demo/policy:v1")],
    );
    pushed.expect(0);
    let policy = pinned(&pushed);

    let by_tag = reg.oci("demo/policy:v1");
    capgate(
        &sb,
        "run1",
        &[],
        &[
            "run",
            "--policy",
            &by_tag,
            "--trust",
            "trust.yaml",
            "--audit",
            "a.jsonl",
        ],
    )
    .expect(0)
    .stdout_has(HELLO)
    .stderr_has(&policy);
    // The audit log pins what the component's tag resolved to, before any decision.
    let log = String::from_utf8(sb.read("a.jsonl")).unwrap();
    let loaded: serde_json::Value = serde_json::from_str(log.lines().nth(1).unwrap()).unwrap();
    assert_eq!(loaded["event"], "loaded", "{log}");
    assert_eq!(loaded["components"]["hello"], component.as_str(), "{log}");
    capgate(
        &sb,
        "run1",
        &[],
        &["verify", "artifact", &component, "--trust", "trust.yaml"],
    )
    .expect(0)
    .stdout_has("signed by release");

    // `--policy-name` pins which policy the tag may hold (the policy is `fleet`).
    for (name, code) in [("fleet", 0), ("fleet-dev", 77)] {
        capgate(
            &sb,
            "run1",
            &[],
            &[
                "run",
                "--policy",
                &by_tag,
                "--trust",
                "trust.yaml",
                "--policy-name",
                name,
            ],
        )
        .expect(code);
    }
    // By digest, once pulled, the registry is not needed.
    capgate(
        &sb,
        "run2",
        &[],
        &["run", "--policy", &policy, "--trust", "trust.yaml"],
    )
    .expect(0)
    .stdout_has(HELLO);
    drop(reg);
    capgate(
        &sb,
        "run2",
        &[],
        &["run", "--policy", &policy, "--trust", "trust.yaml"],
    )
    .expect(0)
    .stdout_has(HELLO);
    // A cache that never pulled it needs the registry, and says it is unreachable.
    capgate(
        &sb,
        "run3",
        &[],
        &["run", "--policy", &policy, "--trust", "trust.yaml"],
    )
    .expect(74)
    .stderr_has("registry error");
}

#[test]
fn a_blob_the_registry_serves_tampered_is_refused_and_nothing_runs() {
    let reg = Registry::start();
    let sb = sandbox();
    let pushed = capgate(
        &sb,
        "c",
        &[],
        &["push", "artifact", "hello.wasm", &reg.oci("demo/hello:v1")],
    );
    pushed.expect(0);
    signed_policy(&sb, &pinned(&pushed));
    // Positive control: served intact, it runs.
    capgate(
        &sb,
        "good",
        &[],
        &["run", "--policy", "policy.yaml", "--trust", "trust.yaml"],
    )
    .expect(0)
    .stdout_has(HELLO);

    let layer = format!(
        "sha256:{}",
        capgate::signing::Sha256::of(&sb.read("hello.wasm"))
    );
    let file = reg.blob_file(&layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let r = capgate(
        &sb,
        "fresh",
        &[],
        &["run", "--policy", "policy.yaml", "--trust", "trust.yaml"],
    );
    r.expect(77).stderr_has("the registry served other bytes");
    assert!(!r.stdout.contains(HELLO), "{}", r.stdout);
    // The copy pulled before the tampering is still intact and still runs.
    capgate(
        &sb,
        "good",
        &[],
        &["run", "--policy", "policy.yaml", "--trust", "trust.yaml"],
    )
    .expect(0)
    .stdout_has(HELLO);
}

#[test]
fn a_component_whose_signature_is_not_in_the_registry_is_refused_unless_unsigned_is_allowed() {
    let reg = Registry::start();
    let sb = sandbox();
    let pushed = capgate(
        &sb,
        "c",
        &[],
        &["push", "artifact", "hello.wasm", &reg.oci("demo/hello:v1")],
    );
    pushed.expect(0);
    let component = pinned(&pushed);
    signed_policy(&sb, &component);
    // Remove the referrers index (the registry has no referrers API): no signature is found.
    reg.withhold_signatures("demo/hello", component.rsplit('@').next().unwrap());

    let r = capgate(
        &sb,
        "c1",
        &[],
        &["run", "--policy", "policy.yaml", "--trust", "trust.yaml"],
    );
    r.expect(77).stderr_has("no capgate signature refers to it");
    assert!(!r.stdout.contains(HELLO));
    capgate(
        &sb,
        "c1",
        &[],
        &["verify", "artifact", &component, "--trust", "trust.yaml"],
    )
    .expect(77)
    .stderr_has("no capgate signature");
    // The same pull with signatures not required runs.
    capgate(
        &sb,
        "c2",
        &[],
        &["run", "--policy", "policy.yaml", "--allow-unsigned"],
    )
    .expect(0)
    .stdout_has(HELLO);
}

#[test]
fn a_registry_with_basic_auth_takes_the_credentials_from_the_environment() {
    let reg = Registry::with_auth();
    let sb = sandbox();
    let target = reg.oci("demo/hello:v1");
    capgate(&sb, "c", &[], &["push", "artifact", "hello.wasm", &target])
        .expect(77)
        .stderr_has("CAPGATE_REGISTRY_USERNAME");
    let wrong = [
        ("CAPGATE_REGISTRY_USERNAME", USER),
        ("CAPGATE_REGISTRY_PASSWORD", "wrong"),
    ];
    capgate(
        &sb,
        "c",
        &wrong,
        &["push", "artifact", "hello.wasm", &target],
    )
    .expect(77);
    let creds = [
        ("CAPGATE_REGISTRY_USERNAME", USER),
        ("CAPGATE_REGISTRY_PASSWORD", PASSWORD),
    ];
    capgate(
        &sb,
        "c",
        &creds,
        &["push", "artifact", "hello.wasm", &target],
    )
    .expect(0);
    signed_policy(&sb, &target);
    capgate(
        &sb,
        "c1",
        &[],
        &["run", "--policy", "policy.yaml", "--trust", "trust.yaml"],
    )
    .expect(77)
    .stderr_has("refused access");
    capgate(
        &sb,
        "c1",
        &creds,
        &["run", "--policy", "policy.yaml", "--trust", "trust.yaml"],
    )
    .expect(0)
    .stdout_has(HELLO);
}

#[test]
fn registry_failures_have_their_exit_codes() {
    let reg = Registry::start();
    let sb = sandbox();
    let run = |policy: &str| {
        capgate(
            &sb,
            "c",
            &[],
            &["run", "--policy", policy, "--trust", "trust.yaml"],
        )
    };
    // Nothing under that tag: a missing input.
    run(&reg.oci("demo/none:v1"))
        .expect(66)
        .stderr_has("not found in the registry");
    // No registry host, or neither tag nor digest: invalid.
    run("oci://demo/hello:v1")
        .expect(65)
        .stderr_has("registry host");
    run(&reg.oci("demo/hello"))
        .expect(65)
        .stderr_has("neither a tag nor a digest");
    // A digest the registry serves other bytes for is refused as tampering.
    let pushed = capgate(
        &sb,
        "c",
        &[],
        &["push", "artifact", "hello.wasm", &reg.oci("demo/hello:v1")],
    );
    pushed.expect(0);
    // A component where a policy is expected is invalid.
    run(&reg.oci("demo/hello:v1"))
        .expect(65)
        .stderr_has("not a capgate policy bundle");
    // A policy component naming a missing tag: exit 66 with the policy's line.
    signed_policy(&sb, &reg.oci("demo/hello:v2"));
    run("policy.yaml").expect(66).stderr_has("policy.yaml:7:");
    // Pushing needs the signature file.
    std::fs::remove_file(sb.path("hello.wasm.sig")).unwrap();
    capgate(
        &sb,
        "c",
        &[],
        &["push", "artifact", "hello.wasm", &reg.oci("demo/hello:v3")],
    )
    .expect(66);
    // An unreachable registry.
    drop(reg);
    run("policy.yaml").expect(74);
}

#[test]
fn a_bundle_whose_rules_file_would_be_laid_out_outside_its_directory_is_refused() {
    let reg = Registry::start();
    let sb = sandbox();
    sb.write(
        "policy.yaml",
        "capgate: 1\nname: evil\nversion: 1\nrules: [r.cedar]\ncomponents: {}\n",
    );
    let yaml = reg.put_blob("demo/evil", &sb.read("policy.yaml"));
    let rules = reg.put_blob("demo/evil", b"permit (principal, action, resource);\n");
    let empty = reg.put_blob("demo/evil", b"{}");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.capgate.policy.v1","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/vnd.capgate.policy.v1+yaml","digest":"{yaml}","size":{}}},{{"mediaType":"application/vnd.capgate.rules.v1+cedar","digest":"{rules}","size":38,"annotations":{{"org.opencontainers.image.title":"../../escaped.cedar"}}}}]}}"#,
        sb.read("policy.yaml").len()
    );
    reg.put_manifest(
        "demo/evil",
        "v1",
        manifest.as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    capgate(
        &sb,
        "c",
        &[],
        &[
            "run",
            "--policy",
            &reg.oci("demo/evil:v1"),
            "--allow-unsigned",
        ],
    )
    .expect(65)
    .stderr_has("relative path below the policy");
    assert!(!sb.path("escaped.cedar").exists());
    assert!(!sb.path("c/escaped.cedar").exists());
}

#[test]
fn a_pulled_policy_may_not_name_paths_inside_the_cache_and_its_layout_is_kept_across_pulls() {
    let reg = Registry::start();
    let sb = sandbox();
    let pushed = capgate(
        &sb,
        "c",
        &[],
        &["push", "artifact", "hello.wasm", &reg.oci("demo/hello:v1")],
    );
    pushed.expect(0);
    let component = pinned(&pushed);
    // A relative audit log would be written inside the cache, under the bundle's directory.
    sb.write(
        "policy.yaml",
        format!("capgate: 1\nname: rel\nversion: 1\naudit: {{ level: all, log: audit.jsonl }}\ncomponents:\n  hello:\n    component: {component}\n"),
    );
    sb.capgate(["sign", "policy", "policy.yaml", "--key", "keys/alice.key"])
        .expect(0);
    capgate(
        &sb,
        "c",
        &[],
        &["push", "policy", "policy.yaml", &reg.oci("demo/rel:v1")],
    )
    .expect(0);
    let tag = reg.oci("demo/rel:v1");
    capgate(
        &sb,
        "c",
        &[],
        &["run", "--policy", &tag, "--trust", "trust.yaml"],
    )
    .expect(65)
    .stderr_has("inside the cache");
    // Given a log of its own, it runs; and a second pull of the tag keeps the same files.
    let inode = || {
        use std::os::unix::fs::MetadataExt as _;
        let files = sb.path("c/files");
        // The bundle's directory (the component has one of its own beside it).
        let dir = std::fs::read_dir(&files)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|d| d.join("policy.yaml").exists())
            .unwrap();
        std::fs::metadata(dir.join("policy.yaml")).unwrap().ino()
    };
    capgate(
        &sb,
        "c",
        &[],
        &[
            "run",
            "--policy",
            &tag,
            "--trust",
            "trust.yaml",
            "--audit",
            "a.jsonl",
        ],
    )
    .expect(0)
    .stdout_has(HELLO);
    let first = inode();
    capgate(
        &sb,
        "c",
        &[],
        &[
            "run",
            "--policy",
            &tag,
            "--trust",
            "trust.yaml",
            "--audit",
            "a.jsonl",
        ],
    )
    .expect(0);
    assert_eq!(inode(), first, "the layout was rebuilt under the host");
}

#[test]
fn nothing_but_the_manifest_is_downloaded_when_no_signature_refers_to_it() {
    let reg = Registry::start();
    let sb = sandbox();
    sb.write(
        "policy.yaml",
        "capgate: 1\nname: big\nversion: 1\nrules: [r.cedar]\ncomponents: {}\n",
    );
    let yaml = reg.put_blob("demo/big", &sb.read("policy.yaml"));
    let big = vec![b'x'; 3 << 20];
    let rules = reg.put_blob("demo/big", &big);
    let empty = reg.put_blob("demo/big", b"{}");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.capgate.policy.v1","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/vnd.capgate.policy.v1+yaml","digest":"{yaml}","size":{}}},{{"mediaType":"application/vnd.capgate.rules.v1+cedar","digest":"{rules}","size":{},"annotations":{{"org.opencontainers.image.title":"r.cedar"}}}}]}}"#,
        sb.read("policy.yaml").len(),
        big.len()
    );
    reg.put_manifest(
        "demo/big",
        "v1",
        manifest.as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    capgate(
        &sb,
        "c",
        &[],
        &[
            "policy",
            "check",
            &reg.oci("demo/big:v1"),
            "--trust",
            "trust.yaml",
        ],
    )
    .expect(77)
    .stderr_has("no capgate signature");
    let blob = sb.path(&format!(
        "c/blobs/sha256/{}",
        rules.trim_start_matches("sha256:")
    ));
    assert!(!blob.exists(), "an unsigned layer was downloaded");
    // Signatures not required: the same pull downloads it (the control).
    capgate(&sb, "c", &[], &["policy", "check", &reg.oci("demo/big:v1")]);
    assert!(blob.exists());
}

#[test]
fn content_signed_only_by_keys_the_trust_root_does_not_trust_is_never_downloaded() {
    let reg = Registry::start();
    let sb = sandbox();
    sb.keys(&["mallory"]);
    // The same component, signed by a key outside the trust root.
    std::fs::copy(sb.path("hello.wasm"), sb.path("other.wasm")).unwrap();
    sb.capgate([
        "sign",
        "artifact",
        "other.wasm",
        "--key",
        "keys/mallory.key",
    ])
    .expect(0);
    let pushed = capgate(
        &sb,
        "c",
        &[],
        &["push", "artifact", "other.wasm", &reg.oci("demo/other:v1")],
    );
    pushed.expect(0);
    let layer = format!("{}", capgate::signing::Sha256::of(&sb.read("other.wasm")));
    let blob = sb.path(&format!("fresh/blobs/sha256/{layer}"));
    capgate(
        &sb,
        "fresh",
        &[],
        &[
            "verify",
            "artifact",
            &pinned(&pushed),
            "--trust",
            "trust.yaml",
        ],
    )
    .expect(77)
    .stderr_has("not trusted");
    assert!(
        !blob.exists(),
        "the layer of an untrusted signature was downloaded"
    );
    // Control: signed by `release` (the artifact role), the same pull downloads and verifies.
    sb.capgate([
        "sign",
        "artifact",
        "other.wasm",
        "--key",
        "keys/release.key",
    ])
    .expect(0);
    let pushed = capgate(
        &sb,
        "c",
        &[],
        &["push", "artifact", "other.wasm", &reg.oci("demo/other:v2")],
    );
    pushed.expect(0);
    capgate(
        &sb,
        "fresh",
        &[],
        &[
            "verify",
            "artifact",
            &pinned(&pushed),
            "--trust",
            "trust.yaml",
        ],
    )
    .expect(0);
    assert!(blob.exists());
}

#[test]
fn a_pulled_policy_may_not_mount_the_cache_through_dot_dot() {
    let reg = Registry::start();
    let sb = sandbox();
    let pushed = capgate(
        &sb,
        "c",
        &[],
        &["push", "artifact", "hello.wasm", &reg.oci("demo/hello:v1")],
    );
    pushed.expect(0);
    std::fs::create_dir_all(sb.path("data")).unwrap();
    let outside = sb.path("data").display().to_string();
    // The last, an absolute host directory outside the cache, is the control.
    for (host, code) in [("..", 65), ("../..", 65), (outside.as_str(), 0)] {
        sb.write(
            "policy.yaml",
            format!("capgate: 1\nname: dd\nversion: 1\ncomponents:\n  hello:\n    component: {}\n    files: [{{ host: \"{host}\", guest: /c, access: read-write }}]\n", pinned(&pushed)),
        );
        let _ = std::fs::remove_file(sb.path("policy.yaml.sig"));
        sb.capgate(["sign", "policy", "policy.yaml", "--key", "keys/alice.key"])
            .expect(0);
        capgate(
            &sb,
            "c",
            &[],
            &["push", "policy", "policy.yaml", &reg.oci("demo/dd:v1")],
        )
        .expect(0);
        capgate(
            &sb,
            "c",
            &[],
            &[
                "run",
                "--policy",
                &reg.oci("demo/dd:v1"),
                "--trust",
                "trust.yaml",
            ],
        )
        .expect(code)
        .stderr_has(if code == 0 { "" } else { "inside the cache" });
    }
}
