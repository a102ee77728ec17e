//! Path rules and read-only mounts hold on every route to a file: renaming the file, its
//! parent or a grandparent, in and out; hard links; symlinks the guest makes; trailing
//! slashes; opens that grant several accesses; calls on a descriptor after a read-only open;
//! listing. Each attack has a control on an allowed sibling, and each denial is in the audit
//! log. A race test swaps a symlink in while the guest works; WASI answers stay wasmtime's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Run, Sandbox, err, ok, run_probe, signed_probe_policy};
use serde_json::Value;

const RULES: &str = r#"@id("no-private")
forbid (principal, action in [Action::"fs.read", Action::"fs.write"], resource)
when { resource.path like "/static/top/private/*" };

@id("inbox-unread")
forbid (principal, action == Action::"fs.read", resource)
when { resource.path like "/data/inbox/*" };

@id("sealed-dir")
forbid (principal, action == Action::"fs.read", resource)
when { resource.path == "/data/sealed" };

@id("locked")
forbid (principal, action == Action::"fs.write", resource)
when { resource.path like "/logs/locked/*" };
"#;

fn fixture() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("static/top/private/secret.txt", "the-secret");
    sb.write("static/top/private/sub/deep.txt", "deep");
    sb.write("static/top/public/a.txt", "public");
    sb.write("static/other/x.txt", "other");
    std::os::unix::fs::symlink("../private/sub", sb.path("static/top/public/lnk")).unwrap();
    std::os::unix::fs::symlink("nowhere", sb.path("static/top/public/dangle")).unwrap();
    sb.write("data/inbox/f.txt", "inbox");
    sb.write("data/ok/g.txt", "fine");
    sb.write("data/sealed/s.txt", "sealed");
    sb.write("logs/locked/l.txt", "locked");
    sb.write("logs/free/m.txt", "free");
    sb.write("ro/r.txt", "read-only");
    sb.write("rules.cedar", RULES);
    signed_probe_policy(
        &sb,
        "capgate: 1\nname: routes\nversion: 1\nrules: [rules.cedar]\naudit: { level: deny, log: audit.jsonl }\ncomponents:\n  probe:\n    component: probe.wasm\n    files:\n      - { host: static, guest: /static, access: read-write }\n      - { host: data, guest: /data, access: read-write }\n      - { host: logs, guest: /logs, access: read-write }\n      - { host: ro, guest: /ro }\n",
    );
    sb
}

/// The denials recorded so far, as (action, resource, reason).
fn denials(sb: &Sandbox) -> Vec<(String, String, String)> {
    std::fs::read_to_string(sb.path("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["decision"] == "deny")
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["resource"].as_str().unwrap().to_owned(),
                r["reasons"][0]
                    .as_str()
                    .or(r["errors"][0].as_str())
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

/// One attack and its control.
struct Case {
    name: &'static str,
    attack: &'static [&'static str],
    /// The guest's error for the attack (`PermissionDenied`: a rule or the adapter refused).
    error: &'static str,
    /// A denial the attack must leave in the log: (action, resource, reason); a resource
    /// ending in `/` stands for any entry below it.
    record: (&'static str, &'static str, &'static str),
    control: &'static [&'static str],
    /// What the control prints after `ok: `.
    works: &'static str,
}

const CASES: &[Case] = &[
    // 1. Renaming an ancestor of a protected file, then reading it under the new name.
    Case {
        name: "rename the parent, read, rename back",
        attack: &[
            "rename-read",
            "/static/top/private",
            "/static/top/tmp",
            "secret.txt",
        ],
        error: "PermissionDenied",
        record: ("fs.read", "/static/top/private/", "no-private"),
        control: &[
            "rename-read",
            "/static/top/public",
            "/static/top/pub2",
            "a.txt",
        ],
        works: "\"public\"",
    },
    Case {
        name: "rename a grandparent",
        attack: &[
            "rename-read",
            "/static/top",
            "/static/moved",
            "private/secret.txt",
        ],
        error: "PermissionDenied",
        record: ("fs.read", "/static/top/private/", "no-private"),
        control: &["rename-read", "/static/other", "/static/other2", "x.txt"],
        works: "\"other\"",
    },
    Case {
        name: "rename a directory into the protected subtree",
        attack: &["rename", "/static/other", "/static/top/private/other"],
        error: "PermissionDenied",
        record: ("fs.read", "/static/top/private/other", "no-private"),
        control: &["rename", "/static/other", "/static/other3"],
        works: "()",
    },
    Case {
        name: "rename the file out",
        attack: &[
            "rename",
            "/static/top/private/secret.txt",
            "/static/top/public/s.txt",
        ],
        error: "PermissionDenied",
        record: ("fs.read", "/static/top/private/secret.txt", "no-private"),
        control: &[
            "rename",
            "/static/top/public/a.txt",
            "/static/top/public/b.txt",
        ],
        works: "()",
    },
    Case {
        name: "rename a read-forbidden file to a readable name",
        attack: &["rename", "/data/inbox/f.txt", "/data/ok/f.txt"],
        error: "PermissionDenied",
        record: ("fs.read", "/data/inbox/f.txt", "inbox-unread"),
        control: &["rename", "/data/ok/g.txt", "/data/ok/g2.txt"],
        works: "()",
    },
    Case {
        name: "rename the directory of a read-forbidden file",
        attack: &["rename-read", "/data/inbox", "/data/box2", "f.txt"],
        error: "PermissionDenied",
        record: ("fs.read", "/data/inbox/f.txt", "inbox-unread"),
        control: &["rename-read", "/data/ok", "/data/ok.moved", "g2.txt"],
        works: "\"fine\"",
    },
    Case {
        name: "rename the directory of a write-forbidden file",
        attack: &["rename", "/logs/locked", "/logs/unlocked"],
        error: "PermissionDenied",
        record: ("fs.write", "/logs/locked/", "locked"),
        control: &["rename", "/logs/free", "/logs/free2"],
        works: "()",
    },
    // 2. Opens that grant more than the rule looks at, and new names for a file.
    Case {
        name: "open read+write a read-forbidden file",
        attack: &["open-rw", "/data/inbox/f.txt"],
        error: "PermissionDenied",
        record: ("fs.read", "/data/inbox/f.txt", "inbox-unread"),
        control: &["open-rw", "/data/ok/g2.txt"],
        works: "\"fine\"",
    },
    Case {
        name: "open create+read a read-forbidden file",
        attack: &["create-read", "/data/inbox/f.txt"],
        error: "PermissionDenied",
        record: ("fs.read", "/data/inbox/f.txt", "inbox-unread"),
        control: &["create-read", "/data/ok/new.txt"],
        works: "\"\"",
    },
    Case {
        name: "hard link a read-forbidden file to a readable name",
        attack: &["hardlink", "/data/inbox/f.txt", "/data/ok/h.txt"],
        error: "PermissionDenied",
        record: ("fs.read", "/data/inbox/f.txt", "inbox-unread"),
        control: &["hardlink", "/data/ok/g2.txt", "/data/ok/h2.txt"],
        works: "()",
    },
    Case {
        name: "a symlink the guest makes into the protected subtree",
        attack: &[
            "symlink",
            "/static",
            "../private/secret.txt",
            "top/public/mine",
        ],
        error: "",
        record: ("fs.read", "/static/top/private/secret.txt", "no-private"),
        control: &["symlink", "/static", "a.txt", "top/public/mine2"],
        works: "()",
    },
    // 3. Calls on a descriptor opened for reading.
    Case {
        name: "set the times of a write-forbidden file opened for reading",
        attack: &["set-times", "/logs/locked/l.txt"],
        error: "PermissionDenied",
        record: ("fs.write", "/logs/locked/l.txt", "locked"),
        control: &["set-times", "/logs/free2/m.txt"],
        works: "()",
    },
    Case {
        name: "set the size of a write-forbidden file opened for reading",
        attack: &["ro-set-size", "/logs/locked/l.txt"],
        error: "PermissionDenied",
        record: ("fs.write", "/logs/locked/l.txt", "locked"),
        control: &["truncate", "/logs/free2/m.txt"],
        works: "()",
    },
    Case {
        name: "sync a write-forbidden file opened for reading",
        attack: &["ro-sync", "/logs/locked/l.txt"],
        error: "PermissionDenied",
        record: ("fs.write", "/logs/locked/l.txt", "locked"),
        control: &["ro-sync", "/logs/free2/m.txt"],
        works: "()",
    },
    Case {
        name: "list a read-forbidden directory",
        attack: &["list", "/data/sealed"],
        error: "PermissionDenied",
        record: ("fs.read", "/data/sealed", "sealed-dir"),
        control: &["list", "/data/ok"],
        works: "[\"g2.txt\", \"h2.txt\", \"new.txt\"]",
    },
    // 4. A trailing slash makes the kernel follow the last symlink.
    Case {
        name: "lstat through a symlink with a trailing slash",
        attack: &["lstat", "/static/top/public/lnk/"],
        error: "PermissionDenied",
        record: ("fs.read", "/static/top/private/sub", "no-private"),
        control: &["lstat", "/static/top/public/lnk"],
        works: "false",
    },
    // The read-only mount: every mutation route refused, by no grant (`not-permitted`).
    Case {
        name: "rename on the read-only mount",
        attack: &["rename", "/ro/r.txt", "/ro/r2.txt"],
        error: "",
        record: ("fs.write", "/ro/r.txt", ""),
        control: &["read", "/ro/r.txt"],
        works: "\"read-only\"",
    },
    Case {
        name: "set the times of a file of the read-only mount",
        attack: &["set-times", "/ro/r.txt"],
        error: "",
        record: ("fs.write", "/ro/r.txt", ""),
        control: &["set-times", "/logs/free2/m.txt"],
        works: "()",
    },
    Case {
        name: "open read+write on the read-only mount",
        attack: &["open-rw", "/ro/r.txt"],
        error: "",
        record: ("fs.write", "/ro/r.txt", ""),
        control: &["open-rw", "/data/ok/g2.txt"],
        works: "\"fine\"",
    },
];

#[track_caller]
fn attacked(r: &Run, case: &Case) {
    r.expect(0);
    assert!(
        r.stdout.starts_with(&format!("err: {}", case.error)),
        "{}: expected a `{}` error, got: {}\nstderr: {}",
        case.name,
        case.error,
        r.stdout,
        r.stderr
    );
}

#[test]
fn every_route_to_a_protected_file_is_decided_and_recorded() {
    let sb = fixture();
    let probe = |args: &[&str]| run_probe(&sb, "probe", args);
    for case in CASES {
        let before = denials(&sb).len();
        attacked(&probe(case.attack), case);
        let new = denials(&sb)[before..].to_vec();
        let (action, resource, reason) = case.record;
        assert!(
            new.iter().any(|(a, r, why)| a == action
                && (r == resource || (resource.ends_with('/') && r.starts_with(resource)))
                && why.contains(reason)),
            "{}: no `{action} {resource}` denial by `{reason}` in {new:#?}",
            case.name
        );
        let control = probe(case.control);
        assert_eq!(
            control.stdout.trim(),
            format!("ok: {}", case.works),
            "{} (control): stderr: {}",
            case.name,
            control.stderr
        );
    }
    // Host side: the protected files are where they were, with their contents.
    assert_eq!(sb.read("static/top/private/secret.txt"), b"the-secret");
    assert_eq!(sb.read("data/inbox/f.txt"), b"inbox");
    assert_eq!(sb.read("logs/locked/l.txt"), b"locked");
    assert_eq!(sb.read("ro/r.txt"), b"read-only");
    sb.capgate(["audit", "verify", "audit.jsonl"]).expect(0);
}

#[test]
fn without_the_rules_the_same_routes_work() {
    // The control for the whole table: the mounts alone allow every route the rules stop.
    let sb = fixture();
    common::resign_policy(
        &sb,
        "capgate: 1\nname: routes\nversion: 2\ncomponents:\n  probe:\n    component: probe.wasm\n    files:\n      - { host: static, guest: /static, access: read-write }\n      - { host: data, guest: /data, access: read-write }\n      - { host: logs, guest: /logs, access: read-write }\n",
    );
    let probe = |args: &[&str]| run_probe(&sb, "probe", args);
    ok(
        &probe(&[
            "rename-read",
            "/static/top/private",
            "/static/top/tmp",
            "secret.txt",
        ]),
        "\"the-secret\"",
    );
    ok(&probe(&["open-rw", "/data/inbox/f.txt"]), "\"inbox\"");
    ok(&probe(&["set-times", "/logs/locked/l.txt"]), "()");
    ok(&probe(&["ro-sync", "/logs/locked/l.txt"]), "()");
    ok(&probe(&["list", "/data/sealed"]), "[\"s.txt\"]");
    ok(&probe(&["lstat", "/static/top/public/lnk/"]), "true");
    ok(
        &probe(&["hardlink", "/data/inbox/f.txt", "/data/ok/h.txt"]),
        "()",
    );
    ok(&probe(&["rename", "/logs/locked", "/logs/unlocked"]), "()");
}

#[test]
fn a_dangling_symlink_answers_as_wasmtime_does_and_is_not_created_through() {
    let sb = fixture();
    let probe = |args: &[&str]| run_probe(&sb, "probe", args);
    // Following it without creating: `no-entry`, as `wasmtime run` answers.
    err(&probe(&["stat", "/static/top/public/dangle"]), "NotFound");
    err(&probe(&["read", "/static/top/public/dangle"]), "NotFound");
    // Creating through it stays refused (documented), and creates nothing.
    err(
        &probe(&["write", "/static/top/public/dangle", "x"]),
        "PermissionDenied",
    );
    assert!(!sb.path("static/top/public/nowhere").exists());
    // Control: the link itself is there to see.
    ok(&probe(&["lstat", "/static/top/public/dangle"]), "false");
}

#[test]
fn calls_on_an_entry_keep_a_trailing_slash_as_the_kernel_does() {
    let sb = fixture();
    std::fs::create_dir(sb.path("static/top/public/empty")).unwrap();
    std::os::unix::fs::symlink("empty", sb.path("static/top/public/to-empty")).unwrap();
    let probe = |args: &[&str]| run_probe(&sb, "probe", args);
    // `rmdir link/` does not follow the link: the kernel answers `not-directory`, and the
    // directory it points to stays.
    let r = probe(&["rmdir", "/static/top/public/to-empty/"]);
    r.expect(0);
    assert!(r.stdout.starts_with("err: "), "{}", r.stdout);
    assert!(sb.path("static/top/public/empty").is_dir());
    assert!(
        std::fs::symlink_metadata(sb.path("static/top/public/to-empty"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // Control: `rmdir dir/` removes the directory itself.
    ok(&probe(&["rmdir", "/static/top/public/empty/"]), "()");
    assert!(!sb.path("static/top/public/empty").exists());
}

#[test]
fn a_working_directory_and_relative_mount_names_as_wasmtime_gives_them() {
    let sb = Sandbox::new();
    sb.write("data/sub/hello.txt", "hello");
    sb.write("rel/r.txt", "relative");
    signed_probe_policy(
        &sb,
        "capgate: 1\nname: cwd\nversion: 1\ncomponents:\n  probe:\n    component: probe.wasm\n    cwd: /data/sub\n    files:\n      - { host: data, guest: /data }\n      - { host: rel, guest: rel }\n",
    );
    let probe = |args: &[&str]| run_probe(&sb, "probe", args);
    // The host answers `wasi:cli/environment.initial-cwd` as `wasmtime run -S cwd=` does.
    ok(&probe(&["initial-cwd"]), "Some(\"/data/sub\")");
    ok(&probe(&["read", "/data/sub/hello.txt"]), "\"hello\"");
    // A relative mount name works with relative paths, and is decided as `/rel`.
    ok(&probe(&["read", "rel/r.txt"]), "\"relative\"");
}

#[test]
fn a_symlink_swapped_in_while_the_guest_creates_files_never_lands_in_the_protected_directory() {
    let sb = fixture();
    std::fs::create_dir(sb.path("static/top/public/swap")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A second writer of the host directory: swaps `swap` between a real directory and a
    // symlink into the protected one, as fast as it can, for as long as the guest runs.
    let swapper = {
        let (dir, stop) = (sb.path("static/top/public"), stop.clone());
        std::thread::spawn(move || {
            let (swap, real) = (dir.join("swap"), dir.join("swap.real"));
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut swaps = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                if std::fs::rename(&swap, &real).is_ok() {
                    let _ = std::os::unix::fs::symlink("../private", &swap);
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(&swap);
                    let _ = std::fs::rename(&real, &swap);
                    swaps += 1;
                }
            }
            swaps
        })
    };
    let r = run_probe(
        &sb,
        "probe",
        &["create-many", "/static/top/public/swap", "3000"],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    r.expect(0);
    let made: usize = r.stdout.trim().trim_start_matches("ok: ").parse().unwrap();
    // Control: the guest did create files while the swaps went on.
    assert!(
        made > 0 && swaps > 0,
        "made {made}, swapped {swaps}: {}",
        r.stderr
    );
    let mut private: Vec<String> = std::fs::read_dir(sb.path("static/top/private"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    private.sort();
    assert_eq!(
        private,
        ["secret.txt", "sub"],
        "made {made}, swapped {swaps}"
    );
}
