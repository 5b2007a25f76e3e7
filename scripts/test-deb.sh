#!/usr/bin/env bash
# The Debian package, end to end, on a machine without systemd (CI): builds it
# (packaging/build-deb.sh), checks it with lintian (no errors), installs it with dpkg, checks the
# unit with systemd-analyze (verify, and an exposure of at most 4.0), starts the packaged
# /usr/sbin/hlfsd with the packaged configuration by hand on a system bus of its own, checks who
# may do what (a member of group hlfs manages volumes with no flags, a non-member only reads,
# import/export files are the caller's), then removes and purges the package. The second
# package, hlfs-libvirt (hlfs-virsh), is checked too: lintian, its files, that only it needs
# libvirt0, install, `hlfs-virsh --help`, purge.
#
# Run as root. The daemon and its bus run in a private mount namespace with /run/hlfs,
# /var/lib/hlfs and /run/dbus on tmpfs, so that nothing of the host's is touched.
# Prints "N passed, 0 failed" at the end; exits non-zero at the first failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

MEMBER=hlfsdeb-member
OTHER=hlfsdeb-other
VOLSIZE=$((64 << 20))
passed=0
ok() {
    passed=$((passed + 1))
    echo "ok: $*"
}
fail() {
    echo "FAILED: $*" >&2
    exit 1
}
# as USER CMD...: runs CMD as USER with a clean environment (no XDG_RUNTIME_DIR; HOME is
# $AS_HOME, else a directory that does not exist).
as() {
    local u=$1
    shift
    runuser -u "$u" -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="${AS_HOME:-/nonexistent}" \
        LANG=C.UTF-8 "$@"
}

# ---- Inside the private mount namespace: the packaged daemon, by hand ----
if [ "${1:-}" = "--inside" ]; then
    work=$2
    for d in /run/hlfs /var/lib/hlfs /run/dbus; do
        mkdir -p "$d"
        mount -t tmpfs -o mode=0755 tmpfs "$d"
    done
    chmod 0700 /var/lib/hlfs
    dbus-daemon --system --fork --nopidfile
    # As the unit starts it: its ExecStart, UMask=0077, NoNewPrivileges=yes and its
    # CapabilityBoundingSet (read from the installed unit), so that the import/export checks
    # below run with exactly the capabilities the unit leaves.
    caps=$(sed -n 's/^CapabilityBoundingSet=//p' /usr/lib/systemd/system/hlfsd.service |
        tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
    exec_start=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/hlfsd.service)
    [ "$exec_start" = "/usr/sbin/hlfsd --config /etc/hlfs/hlfsd.toml --system-bus" ] ||
        fail "unexpected ExecStart: $exec_start"
    # shellcheck disable=SC2086 # ExecStart is split as systemd splits it (no quotes in it)
    (umask 077 && exec setpriv --no-new-privs --bounding-set "-all,$caps" --inh-caps -all $exec_start) \
        >"$work/hlfsd.out" 2>"$work/hlfsd.err" &
    daemon=$!
    user_daemon=
    stop() {
        [ -z "$user_daemon" ] || kill -TERM "$user_daemon" 2>/dev/null || true
        kill -TERM "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
        [ -f /run/dbus/pid ] && kill "$(cat /run/dbus/pid)" 2>/dev/null || true
    }
    trap stop EXIT
    for _ in $(seq 100); do
        busctl --system status org.hlfs.Hlfs1 >/dev/null 2>&1 && break
        kill -0 "$daemon" 2>/dev/null || { cat "$work/hlfsd.err" >&2; fail "hlfsd exited at start"; }
        sleep 0.1
    done
    busctl --system status org.hlfs.Hlfs1 >/dev/null 2>&1 || fail "hlfsd never took org.hlfs.Hlfs1"
    ok "packaged hlfsd started with /etc/hlfs/hlfsd.toml and owns org.hlfs.Hlfs1 on the system bus"
    grep -q "/run/hlfs/nbd.sock" "$work/hlfsd.out" || fail "banner does not name /run/hlfs/nbd.sock"

    # The NBD socket: 0660 group libvirt-qemu where that group exists, else root's only.
    sock=/run/hlfs/nbd.sock
    got=$(stat -c '%a %G' "$sock")
    if getent group libvirt-qemu >/dev/null; then want="660 libvirt-qemu"; else want="600 root"; fi
    [ "$got" = "$want" ] || fail "NBD socket is '$got', expected '$want'"
    ok "NBD socket mode and group: $got"

    # A member of group hlfs manages volumes with no flags (the CLI finds /run/hlfs/dbus.sock).
    as "$MEMBER" hlfs volume create default/debtest 64M || fail "member cannot create a volume"
    as "$MEMBER" hlfs snapshot create default/debtest%s1 || fail "member cannot snapshot"
    ok "member of hlfs created default/debtest and a snapshot, no flags"
    size=$(qemu-img info --output=json "nbd+unix:///default/debtest?socket=$sock" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    [ "$size" = "$VOLSIZE" ] || fail "NBD export size $size, expected $VOLSIZE"
    ok "root's qemu-img reads default/debtest over the packaged NBD socket ($size bytes)"
    if as "$OTHER" qemu-img info "nbd+unix:///default/debtest?socket=$sock" >/dev/null 2>&1; then
        fail "a non-member opened the NBD socket"
    fi
    ok "a non-member cannot open the NBD socket"

    # A non-member only reads.
    as "$OTHER" hlfs volume list | grep -q debtest || fail "non-member cannot list volumes"
    if out=$(as "$OTHER" hlfs volume create default/intruder 1M 2>&1); then
        fail "non-member created a volume"
    fi
    grep -qi "PermissionDenied\|neither root nor in group" <<<"$out" || fail "non-member refusal unclear: $out"
    if as "$OTHER" hlfs volume delete default/debtest >/dev/null 2>&1; then
        fail "non-member deleted a volume"
    fi
    as "$MEMBER" hlfs volume list | grep -q debtest || fail "debtest is gone"
    ok "a non-member lists volumes and is refused create and delete: $(head -n 1 <<<"$out")"

    # The system bus: the packaged policy lets everyone read and only root and hlfs call the rest.
    as "$OTHER" busctl --system introspect org.hlfs.Hlfs1 /org/hlfs/Hlfs1/pool/default >/dev/null ||
        fail "non-member cannot introspect on the system bus"
    as "$OTHER" busctl --system get-property org.hlfs.Hlfs1 /org/hlfs/Hlfs1/pool/default \
        org.hlfs.Pool1 Name >/dev/null || fail "non-member cannot read a property"
    if out=$(as "$OTHER" busctl --system call org.hlfs.Hlfs1 /org/hlfs/Hlfs1/pool/default \
        org.hlfs.Pool1 CreateVolume sta{sv} busx 1048576 0 2>&1); then
        fail "the bus let a non-member call CreateVolume"
    fi
    grep -qi "access\|denied\|reject" <<<"$out" || fail "bus refusal unclear: $out"
    ok "system bus: a non-member introspects and reads, CreateVolume is refused ($out)"
    as "$MEMBER" hlfs --bus system volume create default/busvol 1M || fail "member cannot create over the system bus"
    as "$MEMBER" hlfs --bus system volume delete default/busvol || fail "member cannot delete over the system bus"
    ok "system bus: a member of hlfs creates and deletes"

    # Import and export files are the caller's: opened with the caller's rights, exports owned.
    mdir=$work/member
    as "$MEMBER" hlfs export default/debtest "$mdir/out.raw" || fail "member export failed"
    got=$(stat -c '%U %a %s' "$mdir/out.raw")
    [ "$got" = "$MEMBER 600 $VOLSIZE" ] || fail "export is '$got', expected '$MEMBER 600 $VOLSIZE'"
    ok "an export is the caller's file: $got"
    as "$MEMBER" hlfs export default/debtest%s1 "$mdir/s1.qcow2" -O qcow2 || fail "snapshot export failed"
    [ "$(stat -c %U "$mdir/s1.qcow2")" = "$MEMBER" ] || fail "qcow2 export not the member's"
    qemu-img check "$mdir/s1.qcow2" >/dev/null || fail "exported qcow2 is damaged"
    ok "a qcow2 export of a snapshot is the caller's and checks clean"
    if out=$(as "$MEMBER" hlfs export default/debtest /root/stolen.raw 2>&1); then
        fail "member exported into /root"
    fi
    [ ! -e /root/stolen.raw ] || fail "an export landed in /root"
    ok "an export where the caller may not write is refused: $(head -n 1 <<<"$out")"
    if out=$(as "$MEMBER" hlfs import /etc/shadow default/shadow -f raw 2>&1); then
        fail "member imported /etc/shadow"
    fi
    as "$MEMBER" hlfs volume list | grep -q shadow && fail "a volume 'shadow' exists"
    ok "an import of a file the caller may not read is refused: $(head -n 1 <<<"$out")"
    # A qcow2 whose backing file is one the caller may not read: qemu-img would open it as root.
    as "$MEMBER" qemu-img create -q -f qcow2 -b /etc/shadow -F raw -u "$mdir/leak.qcow2" 1M
    if out=$(as "$MEMBER" hlfs import "$mdir/leak.qcow2" default/leak 2>&1); then
        fail "member imported an image backed by /etc/shadow"
    fi
    grep -q "backing file" <<<"$out" || fail "backing-file refusal unclear: $out"
    as "$MEMBER" hlfs volume list | grep -q leak && fail "a volume 'leak' exists"
    ok "an image with a backing file is refused: $(head -n 1 <<<"$out")"
    as "$MEMBER" hlfs import "$mdir/out.raw" default/back || fail "member import failed"
    qemu-img compare -q -f raw -F raw "$mdir/out.raw" "nbd+unix:///default/back?socket=$sock" ||
        fail "imported volume differs from its image"
    ok "a member imports its own image and the volume holds the same bytes"

    # A normal user's embedded default (hlfsd with no arguments) is that user's to manage.
    uid=$(id -u "$OTHER")
    # setpriv execs: $! is the daemon itself, which must see the SIGTERM below.
    setpriv --reuid "$OTHER" --regid "$(id -g "$OTHER")" --init-groups \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$work/other" LANG=C.UTF-8 hlfsd \
        >"$work/user.out" 2>"$work/user.err" &
    user_daemon=$!
    for _ in $(seq 100); do
        [ -S "/tmp/hlfs-$uid/dbus.sock" ] && break
        kill -0 "$user_daemon" 2>/dev/null || fail "the user's hlfsd exited: $(cat "$work/user.err")"
        sleep 0.1
    done
    as "$OTHER" hlfs volume create default/mine 16M || fail "a user cannot manage its own daemon's pool"
    grep -q "socket=/tmp/hlfs-$uid/nbd.sock" "$work/user.out" || fail "user banner: $(cat "$work/user.out")"
    [ "$(stat -c '%U %a' "/tmp/hlfs-$uid/nbd.sock")" = "$OTHER 600" ] || fail "user's NBD socket not private"
    as "$OTHER" qemu-img info "nbd+unix:///default/mine?socket=/tmp/hlfs-$uid/nbd.sock" >/dev/null ||
        fail "the user's qemu-img cannot read its own volume"
    kill -TERM "$user_daemon"
    wait "$user_daemon" || fail "the user's hlfsd failed: $(cat "$work/user.err")"
    user_daemon=
    rm -rf "/tmp/hlfs-$uid"
    ok "a normal user's own hlfsd (no arguments): the user creates default/mine and reads it over NBD"

    kill -TERM "$daemon"
    rc=0
    wait "$daemon" || rc=$?
    [ "$rc" -eq 0 ] || { cat "$work/hlfsd.err" >&2; fail "hlfsd exited $rc on SIGTERM"; }
    trap - EXIT
    [ -f /run/dbus/pid ] && kill "$(cat /run/dbus/pid)" 2>/dev/null || true
    ok "hlfsd stopped cleanly on SIGTERM"
    echo "$passed" >"$work/inside-passed"
    exit 0
fi

# ---- Outside: build, check, install, run (inside), remove, purge ----
[ "$(id -u)" -eq 0 ] || fail "run as root (dpkg -i, users, mount namespace)"
for u in "$MEMBER" "$OTHER"; do
    if getent passwd "$u" >/dev/null; then userdel "$u" 2>/dev/null || true; fi
done
for p in hlfs hlfs-libvirt; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        fail "package $p is installed already: this test installs and purges it"
    fi
done
work=$(mktemp -d /tmp/hlfs-deb-test.XXXXXX)
chmod 0755 "$work"
had_group=no
getent group hlfs >/dev/null && had_group=yes
cleanup() {
    dpkg -P hlfs-libvirt >/dev/null 2>&1 || true
    dpkg -P hlfs >/dev/null 2>&1 || true
    for u in "$MEMBER" "$OTHER"; do userdel "$u" >/dev/null 2>&1 || true; done
    # Debian keeps a system group at purge; this test leaves the host as it found it.
    [ "$had_group" = yes ] || groupdel hlfs >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

start=$(date +%s)
debs=$(bash packaging/build-deb.sh)
deb=$(sed -n 1p <<<"$debs")
libdeb=$(sed -n 2p <<<"$debs")
[ -f "$deb" ] && [ -f "$libdeb" ] || fail "no packages built: $debs"
ok "built $deb and $libdeb in $(($(date +%s) - start)) s ($(stat -c %s "$deb") and $(stat -c %s "$libdeb") bytes)"

contents=$(dpkg-deb -c "$deb")
for f in ./usr/sbin/hlfsd ./usr/bin/hlfs ./usr/lib/systemd/system/hlfsd.service \
    ./usr/lib/sysusers.d/hlfs.conf ./usr/lib/tmpfiles.d/hlfs.conf ./etc/hlfs/hlfsd.toml \
    ./usr/share/dbus-1/system.d/org.hlfs.Hlfs1.conf \
    ./usr/share/dbus-1/system-services/org.hlfs.Hlfs1.service \
    ./usr/share/man/man1/hlfs.1.gz ./usr/share/man/man8/hlfsd.8.gz \
    ./usr/share/bash-completion/completions/hlfs ./usr/share/zsh/vendor-completions/_hlfs \
    ./usr/share/fish/vendor_completions.d/hlfs.fish ./usr/share/doc/hlfs/copyright \
    ./usr/share/doc/hlfs/changelog.Debian.gz ./usr/share/doc/hlfs/getting-started.md; do
    grep -q " $f\$" <<<"$contents" || fail "package lacks $f"
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/hlfs/hlfsd.toml || fail "hlfsd.toml is not a conffile"
ok "the package holds the binaries, unit, sysusers, tmpfiles, D-Bus files, config, man pages, completions, docs"

lint=$(lintian --fail-on error "$deb" 2>&1 | grep -v "running with root privileges") ||
    fail "lintian reports errors: $lint"
ok "lintian: no errors${lint:+ ($(tr '\n' ';' <<<"$lint"))}"

# hlfs-libvirt: hlfs-virsh, its unit and the schemas; libvirt0 is its dependency, not hlfs's.
libcontents=$(dpkg-deb -c "$libdeb")
for f in ./usr/bin/hlfs-virsh ./usr/lib/systemd/system/hlfs-virsh-publish.service \
    ./usr/share/hlfs/schemas/hlfs-domain.rng ./usr/share/hlfs/schemas/hlfs-storagepool.rng \
    ./usr/share/hlfs/schemas/hlfs-storagevol.rng ./usr/share/doc/hlfs-libvirt/copyright \
    ./usr/share/doc/hlfs-libvirt/libvirt.md ./usr/share/man/man1/hlfs-virsh.1.gz; do
    grep -q " $f\$" <<<"$libcontents" || fail "hlfs-libvirt lacks $f"
done
! grep -q "hlfs-virsh" <<<"$contents" || fail "the hlfs package holds hlfs-virsh"
libdeps=$(dpkg-deb -f "$libdeb" Depends)
grep -q "libvirt0" <<<"$libdeps" && grep -Eq "(^|, )hlfs($|,| )" <<<"$libdeps" ||
    fail "hlfs-libvirt depends on: $libdeps (want libvirt0 and hlfs)"
! grep -q "libvirt" <<<"$(dpkg-deb -f "$deb" Depends)" || fail "hlfs depends on libvirt"
ok "hlfs-libvirt holds hlfs-virsh, its unit, the schemas; Depends: $libdeps"
lint=$(lintian --fail-on error "$libdeb" 2>&1 | grep -v "running with root privileges") ||
    fail "lintian reports errors on hlfs-libvirt: $lint"
ok "lintian hlfs-libvirt: no errors${lint:+ ($(tr '\n' ';' <<<"$lint"))}"

had_data_dir=no
[ -e /var/lib/hlfs ] && had_data_dir=yes
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >"$work/dpkg-i.log" 2>&1 || {
    cat "$work/dpkg-i.log" >&2
    fail "dpkg -i failed"
}
getent group hlfs >/dev/null || fail "group hlfs was not created"
[ -x /usr/sbin/hlfsd ] && [ -x /usr/bin/hlfs ] || fail "binaries missing after dpkg -i"
[ "$(stat -c %a /var/lib/hlfs)" = 700 ] || fail "/var/lib/hlfs is not 0700"
ok "dpkg -i: group hlfs, binaries, /var/lib/hlfs 0700"
man_opt=()
man -w hlfsd >/dev/null 2>&1 || man_opt=(--man=no) # man-db absent or man pages excluded
DEBIAN_FRONTEND=noninteractive dpkg -i "$libdeb" >"$work/dpkg-i-lib.log" 2>&1 || {
    cat "$work/dpkg-i-lib.log" >&2
    fail "dpkg -i hlfs-libvirt failed"
}
help=$(/usr/bin/hlfs-virsh --help 2>&1) || fail "hlfs-virsh --help failed: $help"
grep -q "publish" <<<"$help" || fail "hlfs-virsh --help does not list its verbs: $help"
systemd-analyze verify "${man_opt[@]}" /usr/lib/systemd/system/hlfs-virsh-publish.service ||
    fail "systemd-analyze verify hlfs-virsh-publish.service"
ok "dpkg -i hlfs-libvirt: hlfs-virsh --help runs, the publication unit verifies"

unit=/usr/lib/systemd/system/hlfsd.service
systemd-analyze verify "${man_opt[@]}" "$unit" || fail "systemd-analyze verify $unit"
ok "systemd-analyze verify ${man_opt[*]} $unit"
exposure=$(systemd-analyze security --offline=true "$unit" 2>&1 | sed -n 's/.*Overall exposure level for hlfsd.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "no exposure score from systemd-analyze security --offline=true"
python3 -c "import sys; sys.exit(0 if float('$exposure') <= 4.0 else 1)" ||
    fail "exposure $exposure is above 4.0"
systemd-analyze security --offline=true --threshold=40 "$unit" >/dev/null 2>&1 ||
    fail "systemd-analyze security --threshold=40 fails"
ok "systemd-analyze security --offline=true: exposure $exposure (<= 4.0)"

useradd --no-create-home --shell /usr/sbin/nologin --groups hlfs "$MEMBER"
useradd --no-create-home --shell /usr/sbin/nologin "$OTHER"
mkdir -p "$work/member" "$work/other"
chown "$MEMBER" "$work/member" && chown "$OTHER" "$work/other" && chmod 0700 "$work/member" "$work/other"
unshare --mount --propagation private bash "$0" --inside "$work" ||
    fail "the packaged daemon's checks failed (see above)"
passed=$((passed + $(cat "$work/inside-passed")))

dpkg -P hlfs-libvirt >"$work/dpkg-p-lib.log" 2>&1 || { cat "$work/dpkg-p-lib.log" >&2; fail "dpkg -P hlfs-libvirt failed"; }
[ ! -e /usr/bin/hlfs-virsh ] && [ ! -e /usr/share/hlfs/schemas ] || fail "hlfs-libvirt files left after purge"
ok "dpkg -P hlfs-libvirt removes its files"
dpkg -r hlfs >"$work/dpkg-r.log" 2>&1 || { cat "$work/dpkg-r.log" >&2; fail "dpkg -r failed"; }
[ ! -e /usr/sbin/hlfsd ] && [ ! -e /usr/bin/hlfs ] && [ ! -e "$unit" ] || fail "files left after dpkg -r"
[ -f /etc/hlfs/hlfsd.toml ] || fail "dpkg -r removed the conffile (only purge may)"
ok "dpkg -r removes the files and keeps /etc/hlfs/hlfsd.toml"
dpkg -P hlfs >"$work/dpkg-p.log" 2>&1 || { cat "$work/dpkg-p.log" >&2; fail "dpkg -P failed"; }
[ ! -e /etc/hlfs ] || fail "/etc/hlfs left after purge"
[ "$had_data_dir" = yes ] || [ ! -e /var/lib/hlfs ] || fail "an empty /var/lib/hlfs left after purge"
dpkg-query -W -f='${Status}' hlfs 2>/dev/null | grep -q "not-installed\|^$" ||
    ! dpkg-query -W hlfs >/dev/null 2>&1 || fail "dpkg still knows hlfs after purge"
ok "dpkg -P removes /etc/hlfs and the empty /var/lib/hlfs"

echo "test-deb: $passed passed, 0 failed"
