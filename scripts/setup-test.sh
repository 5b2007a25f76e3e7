#!/usr/bin/env bash
# Installs what the tests need (Debian 12), on top of what running needs (scripts/setup.sh):
# NBD clients and servers, fio, D-Bus, the packaging tools (cargo-deb, lintian, dpkg-dev,
# systemd-analyze) and cargo-nextest. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source <(sed -n '/^apt_install() {/,/^}/p' scripts/setup.sh)
apt_install qemu-utils fio libnbd-bin nbdkit libxml2-utils e2fsprogs dbus systemd util-linux \
    python3 python3-venv lintian dpkg-dev binutils passwd
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
# --no-default-features: gzip-compressed packages, no liblzma to build.
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked --no-default-features cargo-deb@3.8.0
