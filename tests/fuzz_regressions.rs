//! Replays every input that once crashed a fuzz target (`fuzz/regressions/TARGET/`), and the
//! committed seed corpus (`fuzz/corpus/TARGET/`), through the fuzz targets' own harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/harness.rs"]
#[allow(unreachable_pub)]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seen = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            seen += 1;
        }
    }
    // The seed corpus is committed: a target without inputs means a path went wrong.
    assert!(seen > 0, "no inputs found for fuzz target `{target}`");
}

#[test]
fn policy_yaml() {
    replay("policy_yaml", harness::policy_yaml);
}

#[test]
fn cedar_rules() {
    replay("cedar_rules", harness::cedar_rules);
}

#[test]
fn trust_root() {
    replay("trust_root", harness::trust_root);
}

#[test]
fn signature_file() {
    replay("signature_file", harness::signature_file);
}

#[test]
fn audit_log() {
    replay("audit_log", harness::audit_log);
}

#[test]
fn patterns() {
    replay("patterns", harness::patterns);
}

#[test]
fn inspect() {
    replay("inspect", harness::inspect);
}
