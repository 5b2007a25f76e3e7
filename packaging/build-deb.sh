#!/usr/bin/env bash
# Builds the Debian packages with cargo-deb: hlfs (target/debian/hlfs_VERSION-1_ARCH.deb: hlfsd,
# hlfs, their man pages, the shell completions) and hlfs-libvirt (hlfs-virsh, which links
# libvirt0, its man page, its publication unit and the XML schemas): release binaries, then
# `cargo deb --no-build` for each. Prints the path of each .deb on stdout, hlfs first.
# Needs cargo-deb (scripts/setup-test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: bash scripts/setup-test.sh" >&2; exit 1; }
cargo build --release --locked --bin hlfsd --bin hlfs --bin hlfs-virsh --example hlfsd_man >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
rel="$target_dir/release"
extra=target/deb-extra
rm -rf "$extra" && mkdir -p "$extra"
"$rel/hlfs" man >"$extra/hlfs.1"
"$rel/examples/hlfsd_man" >"$extra/hlfsd.8"
gzip -9n "$extra/hlfs.1" "$extra/hlfsd.8"
# hlfs-virsh's man page: its own usage text (`hlfs-virsh hlfs-help`), so that it cannot go stale.
{
    echo '.TH HLFS-VIRSH 1 "" "hlfs-libvirt" "User Commands"'
    echo '.SH NAME'
    echo 'hlfs-virsh \- virsh for HLFS pools, volumes and domain disks'
    echo '.SH DESCRIPTION'
    echo '.nf'
    "$rel/hlfs-virsh" hlfs-help | sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"
    echo '.fi'
    echo '.SH SEE ALSO'
    echo 'virsh(1), hlfs(1), hlfsd(8), /usr/share/doc/hlfs-libvirt/libvirt.md'
} >"$extra/hlfs-virsh.1"
gzip -9n "$extra/hlfs-virsh.1"
"$rel/hlfs" completions bash >"$extra/hlfs.bash"
"$rel/hlfs" completions zsh >"$extra/_hlfs"
"$rel/hlfs" completions fish >"$extra/hlfs.fish"
cargo deb -p hlfs-agent --no-build --strip --locked --output target/debian/ 2>&1 | tail -n 1 >&2
cargo deb -p hlfs-pool-plugin --no-build --strip --locked --output target/debian/ 2>&1 | tail -n 1 >&2
ls -t target/debian/hlfs_*.deb | head -n 1
ls -t target/debian/hlfs-libvirt_*.deb | head -n 1
