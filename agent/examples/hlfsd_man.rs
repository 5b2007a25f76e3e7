//! Prints hlfsd's man page (section 8), generated from its flags, with the files the package
//! installs: packaging/build-deb.sh installs it as /usr/share/man/man8/hlfsd.8.gz.

use clap::CommandFactory;
use std::io::Write;

/// Sections clap does not generate, in roff.
const EXTRA: &str = r#".SH FILES
.TP
\fI/etc/hlfs/hlfsd.toml\fR
The configuration the system service reads (every setting, commented out at its default).
.TP
\fI/var/lib/hlfs\fR
Pools (the pool \fBdefault\fR in \fIpools/default\fR) and the pool registry; root only.
.TP
\fI/run/hlfs/nbd.sock\fR
NBD for QEMU: \fBnbd+unix:///POOL/VOLUME?socket=/run/hlfs/nbd.sock\fR. Group and mode from
\fB[nbd] socket_group\fR and \fBsocket_mode\fR (default group \fBlibvirt-qemu\fR, 0660, where
that group exists).
.TP
\fI/run/hlfs/dbus.sock\fR
The D-Bus API org.hlfs.Hlfs1 without a bus daemon (the \fBhlfs\fR command's default).
.SH ACCESS
Everyone may list and inspect; root, the daemon's own user and (on root's daemon) members of
group \fBhlfs\fR may change things. Import and export files are opened with the caller's identity; an export
belongs to the caller.
.SH SEE ALSO
\fBhlfs\fR(1), \fBsystemd-analyze\fR(1)
.br
\fI/usr/share/doc/hlfs/install.md\fR, \fIcli.md\fR, \fIdbus.md\fR, \fInbd.md\fR
"#;

fn main() -> std::io::Result<()> {
    let cmd = hlfs_agent::config::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd).section("8").render(&mut out)?;
    out.write_all(EXTRA.as_bytes())
}
