//! The `vigil` binary: see `vigil --help` and the README.

fn main() -> std::process::ExitCode {
    vigil::cli::main()
}
