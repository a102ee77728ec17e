//! The compilation cache holds native code that runs without further checks, so capgate uses
//! it only when it is private to the user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Sandbox, run_probe, signed_probe_policy};

#[cfg(unix)]
#[test]
fn the_cache_must_be_private_to_the_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let sb = Sandbox::new();
    signed_probe_policy(
        &sb,
        "capgate: 1\nname: c\nversion: 1\ncomponents:\n  probe:\n    component: probe.wasm\n",
    );
    let run = |cache: &std::path::Path| {
        let mut cmd = sb.command([
            "run",
            "--policy",
            "policy.yaml",
            "--trust",
            "trust.yaml",
            "--",
            "exit",
            "0",
        ]);
        cmd.env("XDG_CACHE_HOME", cache);
        common::Run::from_output(cmd.output().unwrap())
    };
    // A new cache directory is created private...
    let fresh = sb.path("fresh-cache");
    run(&fresh).expect(0);
    let mode = std::fs::metadata(fresh.join("capgate"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    // ...and one that others could write is not used (the run still works, uncached).
    let open = sb.path("open-cache");
    std::fs::create_dir_all(open.join("capgate")).unwrap();
    std::fs::set_permissions(open.join("capgate"), std::fs::Permissions::from_mode(0o777)).unwrap();
    run(&open)
        .expect(0)
        .stderr_has("warning: not using the compilation cache")
        .stderr_has("its mode is 777; it must be 700");
    // Control: the shared test cache works as usual.
    run_probe(&sb, "probe", &["exit", "0"]).expect(0);
}
