//! The `dnat` command line (the library's [`dnat::cli::main`]).

fn main() -> std::process::ExitCode {
    dnat::cli::main()
}
