//! The `rustbalance` binary; all logic lives in the library (`rustbalance::cli`).

fn main() -> std::process::ExitCode {
    rustbalance::cli::main()
}
