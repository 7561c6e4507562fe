//! The `clawfarm` command: `main` → `run` → `ExitCode`.

fn main() -> std::process::ExitCode {
    clawfarm::cli::main()
}
