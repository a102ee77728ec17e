//! The README's quick start works when pasted: its shell block runs against the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn readme_quick_start_runs() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let begin = readme
        .find("<!-- quickstart:begin -->")
        .expect("quickstart marker");
    let end = readme
        .find("<!-- quickstart:end -->")
        .expect("quickstart end marker");
    let block = &readme[begin..end];
    let body = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.rsplit_once("```"))
        .map(|(body, _)| body)
        .expect("a sh block between the markers");
    // `cargo build` already ran (this test's binary exists); the block's PATH line would point
    // at the same directory.
    let script: String = body
        .lines()
        .filter(|l| !l.starts_with("cargo ") && !l.starts_with("export PATH="))
        .map(|l| format!("{l}\n"))
        .collect();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_capgate"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The block runs from the repository root and `cd`s away; `$OLDPWD` is the root.
    let script = format!("cd {}\n{script}", env!("CARGO_MANIFEST_DIR"));
    let cache = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-cache");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("XDG_CACHE_HOME", cache)
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quick start failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: app.wasm"), "{stdout}");
    assert!(stdout.contains("ok: policy `demo` version 1"), "{stdout}");
    assert!(stdout.contains("refused, exit 77"), "{stdout}");
    assert!(stdout.contains("200 image/png"), "{stdout}");
    assert!(stdout.contains("records intact"), "{stdout}");
    assert!(
        stdout.contains("checkpoint(s) signed by auditor"),
        "{stdout}"
    );
    assert!(
        stdout.contains("http-handler  call") && stdout.contains("#admin-stats"),
        "{stdout}"
    );
    // The refused call: a bare 403 for the client; the reason is in the server's log.
    assert!(stdout.contains("forbidden\n 403"), "{stdout}");
    // Where everything is, said at the start and the end.
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("quick start: working in "))
        .expect("the quick start names its directory");
    assert!(stdout.contains(&format!("are in {dir}")), "{stdout}");
    let log = std::fs::read_to_string(std::path::Path::new(dir).join("serve.log")).unwrap();
    assert!(
        log.contains("call from `http-handler` to `image-processor` example:image/image-processor@0.1.0#admin-stats denied: no grant matches"),
        "{log}"
    );
    assert!(std::path::Path::new(dir).join("sepia.png").is_file());
    assert!(
        stdout.contains(
            "hello from a capgate guest; argv = [\"app\", \"--greeting\", \"from-the-cli\"]"
        ),
        "{stdout}"
    );
    assert!(
        stderr.contains("app.cedar: content does not match its signature"),
        "{stderr}"
    );
}
