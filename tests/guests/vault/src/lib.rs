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
}

export!(Vault);
