//! The smallest guest: prints a greeting and its arguments, proving the guest build works.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("hello from a capgate guest; argv = {args:?}");
}
