//! The caller of the linking tests: imports `test:secrets/vault` and calls what argv says,
//! printing one line per result. It also tries to reach the vault's grants directly.

wit_bindgen::generate!({ path: "../wit", world: "vault-client" });

use test::secrets::vault;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `add-many N`: N calls of `add` (for the brokered-call benchmark).
    if args.get(1).map(String::as_str) == Some("add-many") {
        let n: u32 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        let sum = (0..n).fold(0u32, |acc, i| acc.wrapping_add(vault::add(i, 1)));
        println!("add-many: {sum}");
        return;
    }
    for op in &args[1..] {
        match op.as_str() {
            "public" => println!("public: {}", vault::get_public()),
            "secret" => println!("secret: {}", vault::get_secret()),
            "crash" => println!("crash: {}", vault::crash()),
            "count" => println!("count: {}", vault::count()),
            "add" => println!("add: {}", vault::add(2, 40)),
            "vault-file" => println!("vault-file: {:?}", vault::read_file("/secret/token.txt")),
            "vault-env" => println!("vault-env: {:?}", vault::env("SECRET_TOKEN")),
            "own-file" => println!("own-file: {:?}", std::fs::read_to_string("/secret/token.txt").map_err(|e| e.kind())),
            "own-env" => println!("own-env: {:?}", std::env::var("SECRET_TOKEN").ok()),
            other => println!("unknown op {other}"),
        }
    }
}
