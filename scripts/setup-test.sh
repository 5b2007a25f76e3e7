#!/usr/bin/env bash
# Installs what the tests need (Debian 12), on top of what running needs (scripts/setup.sh):
# NBD clients and servers, fio, D-Bus, the packaging tools (cargo-deb, lintian, dpkg-dev,
# systemd-analyze), libvirt, QEMU and virt-install for the pool plugin's tests, and cargo-nextest.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source <(sed -n '/^apt_install() {/,/^}/p' scripts/setup.sh)
# qemu-system-x86 (Debian 12: QEMU 7.2) conflicts with a qemu-utils 10 from backports, and apt
# would then remove qemu-img: install it together with the qemu-utils of its own version.
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed"; then
    "${sudo[@]}" apt-get update -qq
    qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
    echo "installing: qemu-system-x86 qemu-utils=$qv" >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        --allow-downgrades qemu-system-x86 "qemu-utils=$qv" >/dev/null
fi
apt_install qemu-utils fio libnbd-bin nbdkit libxml2-utils e2fsprogs dbus systemd util-linux \
    python3 python3-venv lintian dpkg-dev binutils passwd fuse3 \
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config \
    busybox-static xz-utils virtinst
# QEMU's user and group as Debian's libvirt-daemon-system makes them (that package needs systemd,
# so the tests run libvirtd from libvirt-daemon): hlfsd gives its NBD socket to group
# libvirt-qemu, and pool-plugin/tests/libvirt_qemu_user.rs runs guests as that user.
if ! getent group libvirt-qemu >/dev/null; then
    "${sudo[@]}" groupadd --system libvirt-qemu
fi
if ! getent passwd libvirt-qemu >/dev/null; then
    "${sudo[@]}" useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --no-create-home \
        --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
fi
# The test guests' kernel (a Debian linux-image unpacked into a cache, not installed).
bash scripts/libvirt/guest-kernel.sh >/dev/null
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
# --no-default-features: gzip-compressed packages, no liblzma to build.
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked --no-default-features cargo-deb@3.8.0
