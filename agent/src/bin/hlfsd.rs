//! hlfsd: the HLFS host agent. All logic lives in `hlfs_agent::daemon`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    hlfs_agent::daemon::init_logging();
    let cli = hlfs_agent::config::Cli::parse();
    match hlfs_agent::daemon::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("hlfsd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
