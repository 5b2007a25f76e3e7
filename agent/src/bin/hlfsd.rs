//! hlfsd: the HLFS host agent. All logic lives in `hlfs_agent::daemon`.

use clap::Parser;

/// Keeps request-sized buffers (up to 32 MiB NBD payloads, segment-sized appends) on the heap
/// rather than in fresh mappings: glibc would otherwise map, fault in, zero and unmap every
/// large buffer, which costs more CPU than serving the request.
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn main() -> std::process::ExitCode {
    tune_malloc();
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
