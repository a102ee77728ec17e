//! Builds the guest components in `tests/guests/` for `wasm32-wasip2`, once per test process.
//!
//! Guests are compiled from source whenever the target is installed. If it is not, the
//! components committed under `tests/guests/prebuilt/` are used and a line on stderr says so.
//! If neither is possible the test fails and says how to install the target: a guest test
//! never skips silently.
#![allow(unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const INSTALL_HINT: &str = "install the guest target with `rustup target add wasm32-wasip2`";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where built guests land: `target/guests/wasm32-wasip2/release/NAME.wasm`.
fn built_dir() -> PathBuf {
    root().join("target/guests/wasm32-wasip2/release")
}

fn prebuilt_dir() -> PathBuf {
    root().join("tests/guests/prebuilt")
}

/// `Ok(())` if the guests were built from source; `Err(why)` if the build could not run.
fn build_all() -> &'static Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "--quiet", "--target", "wasm32-wasip2"])
            .arg("--manifest-path")
            .arg(root().join("tests/guests/Cargo.toml"))
            .arg("--target-dir")
            .arg(root().join("target/guests"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .map_err(|e| format!("cannot run cargo to build the guests: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
}

/// The path of guest component `name` (a member of `tests/guests/`).
pub fn guest(name: &str) -> PathBuf {
    // Binaries keep their name; libraries (cdylib) replace `-` with `_`.
    let file = |dir: PathBuf| {
        let plain = dir.join(format!("{name}.wasm"));
        if plain.exists() {
            plain
        } else {
            dir.join(format!("{}.wasm", name.replace('-', "_")))
        }
    };
    match build_all() {
        Ok(()) => {
            let p = file(built_dir());
            assert!(
                p.exists(),
                "guest `{name}` built but {} is missing",
                p.display()
            );
            p
        }
        Err(why) => {
            let p = file(prebuilt_dir());
            if p.exists() {
                eprintln!(
                    "note: could not build guest `{name}` from source ({}); using the committed {}",
                    why.lines()
                        .find(|l| l.contains("error"))
                        .unwrap_or("build failed"),
                    p.display()
                );
                return p;
            }
            panic!(
                "cannot build guest `{name}` and no prebuilt copy exists: {INSTALL_HINT}\n{why}"
            );
        }
    }
}

/// Copies every built guest into `tests/guests/prebuilt/`, for the fallback above.
#[allow(dead_code)]
pub fn refresh_prebuilt(names: &[&str]) {
    std::fs::create_dir_all(prebuilt_dir()).unwrap();
    for n in names {
        let src = guest(n);
        let dst = prebuilt_dir().join(src.file_name().unwrap());
        std::fs::copy(&src, &dst).unwrap();
    }
}

/// True if `bytes` start like a WebAssembly component (not a core module).
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

#[allow(dead_code)]
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}
