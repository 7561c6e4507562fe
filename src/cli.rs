//! placeholder

/// Entry point of the `clawfarm` binary.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
