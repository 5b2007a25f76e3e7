#!/usr/bin/env bash
# Installs what running HLFS needs on Debian 12 (the README's first command): qemu-img, which
# import and export jobs run. Works as root or, through sudo, as a normal user; skips apt when
# everything is already there. The test tools are scripts/setup-test.sh's.
set -euo pipefail
# apt_install PACKAGE...: installs those of the packages that are missing.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "installing: ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
# fuse3: fusermount3, with which a normal user's hlfsd mounts its FUSE view.
apt_install qemu-utils fuse3
