//! Imports `test:secrets/vault` and exports it again, forwarding every call: a middle link
//! for chain and cycle tests.

wit_bindgen::generate!({ path: "../wit", world: "vault-relay" });

use exports::test::secrets::vault::Guest;
use test::secrets::vault as next;

struct Relay;

impl Guest for Relay {
    fn get_public() -> String {
        format!("via relay: {}", next::get_public())
    }

    fn get_secret() -> String {
        next::get_secret()
    }

    fn read_file(path: String) -> Result<String, String> {
        next::read_file(&path)
    }

    fn env(name: String) -> Option<String> {
        next::env(&name)
    }

    fn crash() -> String {
        next::crash()
    }

    fn count() -> u32 {
        next::count()
    }

    fn add(a: u32, b: u32) -> u32 {
        next::add(a, b)
    }

    fn gather(dir: String, n: u32, ms: u32) -> u32 {
        next::gather(&dir, n, ms)
    }
}

export!(Relay);
