//! The `capgate` command-line tool. Everything it does is a thin layer over the library.

#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
