//! The `xray` binary: everything lives in the library; see `xray::cli`.
fn main() -> std::process::ExitCode {
    xray::cli::run()
}
