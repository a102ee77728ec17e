//! The caller of the linking tests: imports `test:secrets/vault` and calls what argv says,
//! printing one line per result. It also tries to reach the vault's grants directly.

wit_bindgen::generate!({ path: "../wit", world: "vault-client" });

use test::secrets::vault;

fn main() {
    let args: Vec<String> = std::env::args().collect();
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
