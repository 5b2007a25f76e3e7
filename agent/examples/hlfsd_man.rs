//! Prints hlfsd's man page (section 8), generated from its flags: packaging/build-deb.sh
//! installs it as /usr/share/man/man8/hlfsd.8.gz.

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let cmd = hlfs_agent::config::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd).section("8").render(&mut out)
}
