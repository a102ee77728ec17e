//! Cedar rules on paths, enforced by the filesystem adapter on every path-taking call: a
//! forbidden subpath is denied however it is spelt or reached, while its siblings in the same
//! mount stay allowed; every decision reaches the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Run, Sandbox, ok, run_probe, signed_probe_policy};

const RULES: &str = r#"@id("no-private")
forbid (principal, action in [Action::"fs.read", Action::"fs.write"], resource)
when { resource.path like "/static/private/*" };
"#;

fn fixture() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("static/public/a.txt", "public\n");
    sb.write("static/private/secret.txt", "the-secret\n");
    std::fs::create_dir_all(sb.path("work")).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("../private/secret.txt", sb.path("static/public/sneaky"))
            .unwrap();
        std::os::unix::fs::symlink("a.txt", sb.path("static/public/fine")).unwrap();
        std::os::unix::fs::symlink("private", sb.path("static/alias")).unwrap();
    }
    sb.write("rules.cedar", RULES);
    signed_probe_policy(
        &sb,
        "capgate: 1
name: path-rules
version: 1
rules: [rules.cedar]
audit: { level: deny, log: audit.jsonl }
components:
  probe:
    component: probe.wasm
    files:
      - { host: static, guest: /static, access: read-write }
",
    );
    sb
}

#[track_caller]
fn refused(r: &Run) {
    common::err(r, "PermissionDenied");
    assert!(!r.stdout.contains("the-secret"));
}

#[test]
fn a_forbidden_subpath_is_denied_while_its_sibling_is_allowed() {
    let sb = fixture();
    let probe = |args: &[&str]| run_probe(&sb, "probe", args);

    // The sibling: read, write, create, rename inside `public` all work.
    ok(&probe(&["read", "/static/public/a.txt"]), "\"public\\n\"");
    ok(&probe(&["write", "/static/public/b.txt", "x"]), "()");
    ok(
        &probe(&["rename", "/static/public/b.txt", "/static/public/c.txt"]),
        "()",
    );
    ok(&probe(&["read", "/static/public/fine"]), "\"public\\n\"");
    ok(&probe(&["mkdir", "/static/public/d"]), "()");

    // The forbidden subpath, spelt every way.
    let r = probe(&["read", "/static/private/secret.txt"]);
    refused(&r);
    r.stderr_has(
        "capgate: denied `probe` fs.read /static/private/secret.txt: forbidden by `no-private`",
    );
    refused(&probe(&["read", "/static/public/../private/secret.txt"]));
    refused(&probe(&["read", "/static//private/./secret.txt"]));
    // Through symlinks in the mount: a file link and a directory link.
    refused(&probe(&["read", "/static/public/sneaky"]));
    refused(&probe(&["read", "/static/alias/secret.txt"]));
    // Writes, creates and moves into it.
    refused(&probe(&["write", "/static/private/secret.txt", "pwned"]));
    refused(&probe(&["create", "/static/private/new.txt"]));
    refused(&probe(&["remove", "/static/private/secret.txt"]));
    refused(&probe(&["mkdir", "/static/private/d"]));
    refused(&probe(&[
        "rename",
        "/static/public/c.txt",
        "/static/private/c.txt",
    ]));
    refused(&probe(&[
        "rename",
        "/static/private/secret.txt",
        "/static/public/s.txt",
    ]));
    refused(&probe(&[
        "hardlink",
        "/static/private/secret.txt",
        "/static/public/h.txt",
    ]));
    // A symlink the guest makes cannot point into it (and following one would be refused).
    let r = probe(&["symlink", "/static", "../private/secret.txt", "public/mine"]);
    r.expect(0);
    assert!(
        r.stdout.contains("name: \"access\""),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    // Control: a guest-made link to a sibling works.
    ok(
        &probe(&["symlink", "/static", "a.txt", "public/mine"]),
        "()",
    );
    ok(&probe(&["read", "/static/public/mine"]), "\"public\\n\"");

    // Host side: the secret is untouched and nothing was created beside it.
    assert_eq!(sb.read("static/private/secret.txt"), b"the-secret\n");
    let mut names: Vec<String> = std::fs::read_dir(sb.path("static/private"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["secret.txt"]);

    // Every denial is in the audit log, naming the rule; the resolved path is the one denied
    // for the symlink.
    let log = std::fs::read_to_string(sb.path("audit.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r.get("type").is_none())
        .collect();
    assert!(recs.iter().all(|r| r["decision"] == "deny"));
    let sneaky = recs
        .iter()
        .find(|r| r["action"] == "fs.read" && r["resource"] == "/static/private/secret.txt")
        .expect("the read through the symlink is recorded at its resolved path");
    assert_eq!(sneaky["reasons"][0], "no-private");
    assert!(
        recs.iter()
            .any(|r| r["action"] == "fs.write" && r["resource"] == "/static/private/new.txt"),
        "{log}"
    );
    sb.capgate(["audit", "verify", "audit.jsonl"]).expect(0);
}

#[test]
fn without_the_rule_the_same_paths_are_allowed() {
    // The control for the whole table: the mount alone grants the private directory.
    let sb = Sandbox::new();
    sb.write("static/private/secret.txt", "the-secret\n");
    #[cfg(unix)]
    std::os::unix::fs::symlink("private", sb.path("static/alias")).unwrap();
    signed_probe_policy(
        &sb,
        "capgate: 1
name: path-rules
version: 1
components:
  probe:
    component: probe.wasm
    files:
      - { host: static, guest: /static, access: read-write }
",
    );
    let probe = |args: &[&str]| run_probe(&sb, "probe", args);
    ok(
        &probe(&["read", "/static/private/secret.txt"]),
        "\"the-secret\\n\"",
    );
    ok(
        &probe(&["read", "/static/alias/secret.txt"]),
        "\"the-secret\\n\"",
    );
    ok(&probe(&["create", "/static/private/new.txt"]), "()");
}
