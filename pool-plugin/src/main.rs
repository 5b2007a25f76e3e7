//! `hlfs-virsh`: virsh for HLFS. The seeds' pool and volume XML (`type='hlfs'`, HLFS URIs) and
//! domain XML with `protocol='hlfs'` disks are carried out through hlfsd and libvirt; every
//! other verb, and every verb naming something that is not HLFS's, runs stock `virsh` with the
//! same arguments, so `alias virsh=hlfs-virsh` is safe. See docs/libvirt.md.

mod cli;

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HLFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    virt::error::clear_error_callback();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(cli::main(args));
    std::process::exit(code);
}
