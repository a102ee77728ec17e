//! The docs cannot go stale: every fenced shell block of the README and `docs/` that is marked
//! `<!-- runnable -->` runs, file by file, in one shell, against the built `capgate`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const MARK: &str = "<!-- runnable -->";

/// The mark on a line of its own (as prose may quote it).
fn mark_line() -> String {
    format!("\n{MARK}\n")
}

/// The runnable blocks of a Markdown file, in order.
fn runnable_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mark = mark_line();
    let mut rest = text;
    while let Some(i) = rest.find(&mark) {
        rest = &rest[i + mark.len()..];
        let body = rest
            .trim_start()
            .strip_prefix("```sh\n")
            .expect("a runnable mark is followed by a ```sh block");
        let end = body.find("\n```").expect("the block ends");
        blocks.push(body[..end].to_owned());
        rest = &body[end..];
    }
    blocks
}

/// Runs `file`'s runnable blocks as one script from the repository root; returns
/// (stdout, stderr).
fn run_doc(file: &Path) -> (String, String) {
    let text = std::fs::read_to_string(file).unwrap();
    let script = runnable_blocks(&text).join("\n");
    assert!(
        !script.is_empty(),
        "{} has no runnable block",
        file.display()
    );
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_capgate")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path)
        .env(
            "XDG_CACHE_HOME",
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-cache"),
        )
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{}: a runnable block failed:\n{stdout}\n{stderr}",
        file.display()
    );
    (stdout, stderr)
}

/// Every Markdown file of the README and `docs/`.
fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn every_runnable_block_of_the_docs_runs() {
    let mut ran = Vec::new();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        if !text.contains(&mark_line()) {
            continue;
        }
        let (stdout, stderr) = run_doc(&file);
        // What the getting-started guide says happens, happens.
        if file.ends_with("docs/getting-started.md") {
            for said in [
                "hi you",
                "cannot change the greeting",
                "refused, exit 65",
                "discarded 1 signature over the old content",
                "hi again\nchanged the greeting",
                "ok: greeter.wasm",
                "signed by me2",
            ] {
                assert!(
                    stdout.contains(said),
                    "getting-started: no {said:?} in\n{stdout}"
                );
            }
            assert!(
                stderr.contains("capgate: denied `greeter` fs.write /config/greeting.txt: no grant matches (`greeter.files[0]` grants `/config` read-only)"),
                "{stderr}"
            );
            assert!(stdout.contains("[files (and cwd)]"), "{stdout}");
        }
        // And what the least-privilege walkthrough says.
        if file.ends_with("docs/least-privilege.md") {
            for said in [
                "proof: the 3 distinct request(s) learned from are all allowed under the learned policy",
                "{ host: \"srv\", guest: \"/srv\", access: read-write }  # 4 records: 3 reads, 1 write",
                "# dropped: every `network.connect` grant, no allowed record",
                "+ added    files: /srv/config (read-only) from srv/config",
                "recorded requests: replayed 4 decisions under `probe-svc` version 2: 0 would change",
                "delta against the version this host accepted:",
                "err: NotFound",
                "report-only rules would have denied (not enforced)",
                "- newly denied  fs.write: Path",
                "2 would change (2 allow → deny, 0 deny → allow)",
            ] {
                assert!(
                    stdout.contains(said),
                    "least-privilege: no {said:?} in\n{stdout}"
                );
            }
        }
        // And what the fleet walkthrough says: two hosts from a registry, a rollout, a refusal.
        if file.ends_with("docs/fleet.md") {
            for said in [
                "host a: GET /admin -> 403",
                "host b: GET /admin -> 403",
                "host a: GET /admin -> 200",
                "host b: GET /admin -> 200",
                "version 2 activated (was version 1)",
                "version 2 goes on serving",
                "\"type\":\"policy\",\"event\":\"activated\"",
                "\"type\":\"policy\",\"event\":\"refused\"",
                "ok: 8 records intact",
            ] {
                assert!(stdout.contains(said), "fleet: no {said:?} in\n{stdout}");
            }
        }
        ran.push(file);
    }
    assert!(
        ran.iter().any(|f| f.ends_with("docs/getting-started.md")),
        "the getting-started guide has runnable blocks: {ran:?}"
    );
}

#[test]
fn runnable_blocks_are_found_in_order() {
    let text = format!(
        "a\n{MARK}\n```sh\necho one\n```\nb `{MARK}` in prose\n```sh\necho not this\n```\n{MARK}\n```sh\necho two\n```\n"
    );
    assert_eq!(runnable_blocks(&text), ["echo one", "echo two"]);
}
