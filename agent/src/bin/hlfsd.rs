//! hlfsd: the HLFS host agent. All logic lives in `hlfs_agent::daemon`.

use clap::Parser;

/// Keeps request-sized buffers (up to 32 MiB NBD payloads, segment-sized appends) on the heap
/// rather than in fresh mappings: glibc would otherwise map, fault in, zero and unmap every
/// large buffer, which costs more CPU than serving the request.
///
/// Free memory at the top of a heap is given back once 32 MiB of it is free: the heaps of
/// glibc's per-thread arenas are at most 64 MiB, so a higher threshold (it was 256 MiB) never
/// gave anything back (`malloc_trim` does not shrink them either): 16 clients that queued
/// 32 MiB READs and went away left hlfsd at 770 MiB.
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

fn main() -> std::process::ExitCode {
    tune_malloc();
    hlfs_agent::daemon::init_logging();
    // Before the settings are resolved: the default caps are sized from this limit.
    match hlfs_agent::limits::raise_nofile() {
        Ok(n) => tracing::debug!(nofile = n, "descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
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
