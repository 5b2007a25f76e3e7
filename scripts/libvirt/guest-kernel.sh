#!/usr/bin/env bash
# Fetches a Debian kernel and its modules for the test guests into a cache directory (nothing is
# installed: the linux-image .deb is downloaded with apt-get download and unpacked with dpkg -x).
# Idempotent. Prints the directory holding boot/vmlinuz-* and lib/modules/*.
#   HLFS_GUEST_KERNEL_DIR  cache (default /var/cache/hlfs-test/kernel)
set -euo pipefail
K=${HLFS_GUEST_KERNEL_DIR:-/var/cache/hlfs-test/kernel}
if ! ls "$K"/root/boot/vmlinuz-* >/dev/null 2>&1; then
    mkdir -p "$K"
    cd "$K"
    find_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
    pkg=$(find_pkg)
    if [ -z "$pkg" ]; then apt-get update -qq >&2 && pkg=$(find_pkg); fi
    [ -n "$pkg" ] || { echo "guest-kernel.sh: no linux-image package found (apt-get update?)" >&2; exit 1; }
    rm -f ./*.deb
    apt-get download "$pkg" >&2
    rm -rf root.tmp && dpkg -x ./"${pkg}"_*.deb root.tmp && rm -f ./*.deb
    rm -rf root && mv root.tmp root
fi
echo "$K/root"
