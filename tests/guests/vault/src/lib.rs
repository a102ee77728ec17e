//! The callee of the linking tests: exports `test:secrets/vault`.

use std::sync::atomic::{AtomicU32, Ordering};

wit_bindgen::generate!({ path: "../wit", world: "vault-provider" });

use exports::test::secrets::vault::Guest;

static CALLS: AtomicU32 = AtomicU32::new(0);

struct Vault;

impl Guest for Vault {
    fn get_public() -> String {
        CALLS.fetch_add(1, Ordering::Relaxed);
        "public-value".into()
    }

    fn get_secret() -> String {
        CALLS.fetch_add(1, Ordering::Relaxed);
        "the-secret-value".into()
    }

    fn read_file(path: String) -> Result<String, String> {
        std::fs::read_to_string(&path).map_err(|e| format!("{:?}: {e}", e.kind()))
    }

    fn env(name: String) -> Option<String> {
        std::env::var(name).ok()
    }

    fn crash() -> String {
        panic!("the vault was asked to crash");
    }

    fn count() -> u32 {
        CALLS.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn add(a: u32, b: u32) -> u32 {
        a.wrapping_add(b)
    }

    fn gather(dir: String, n: u32, ms: u32) -> u32 {
        use std::hash::BuildHasher as _;
        let mine = std::collections::hash_map::RandomState::new().hash_one(0u8);
        let _ = std::fs::write(format!("{dir}/{mine:016x}"), b"");
        let start = std::time::Instant::now();
        loop {
            let seen = std::fs::read_dir(&dir).map(|d| d.count() as u32).unwrap_or(0);
            if seen >= n || start.elapsed() >= std::time::Duration::from_millis(ms.into()) {
                return seen;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

export!(Vault);
