#!/usr/bin/env bash
# Installs the system packages HLFS and its tests use (Debian 12). Idempotent; skips apt when
# everything is already there.
set -euo pipefail
pkgs=(qemu-utils fio libnbd-bin nbdkit libxml2-utils e2fsprogs dbus systemd util-linux python3 python3-venv
      # the libvirt pool plugin (pool-plugin/): libvirtd + virsh for its tests, libvirt-dev to
      # build the `virt` crate, QEMU and busybox for the TCG test guests
      libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
      qemu-system-x86 busybox-static xz-utils)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing: ${missing[*]}" >&2
    $SUDO apt-get update -qq
    extra=()
    # qemu-system-x86 (Debian 12: QEMU 7.2) conflicts with a qemu-utils 10 from backports, and apt
    # would then remove qemu-img: install the qemu-utils of the same version with it.
    if printf '%s\n' "${missing[@]}" | grep -qx qemu-system-x86; then
        qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
        extra=(--allow-downgrades "qemu-utils=$qv")
        mapfile -t missing < <(printf '%s\n' "${missing[@]}" | grep -vx qemu-utils)
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${extra[@]}" "${missing[@]}" >/dev/null
fi
# The test guests' kernel (a Debian linux-image unpacked into a cache, not installed).
bash "$(dirname "$0")/libvirt/guest-kernel.sh" >/dev/null
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
