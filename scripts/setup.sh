#!/usr/bin/env bash
# Installs the system packages HLFS and its tests use (Debian 12). Idempotent; skips apt when
# everything is already there.
set -euo pipefail
# passwd: groupadd, useradd, usermod (the CLI socket-rule test makes group hlfs and two users)
pkgs=(qemu-utils fio libnbd-bin nbdkit libxml2-utils e2fsprogs dbus systemd util-linux passwd python3 python3-venv fuse3)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing: ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
