#!/usr/bin/env bash
# FUSE view benchmark (issue #13): fio on a volume file of hlfsd's FUSE view (libaio, O_DIRECT)
# against the same hlfsd's NBD export and against nbdkit's file plugin (fio's nbd engine), one
# run, same disk. Needs root (the view mounts directly) or fusermount3.
# Usage: [HLFSD=path] scripts/bench-fuse.sh [--size 1G] [--runtime 15] [--dir DIR]
#          [--only seqwrite1M,...] [--fuse-first] [--lookup N]
# Prints a Markdown table (IOPS for 4K, MiB/s for 1M) with the FUSE / NBD ratios.
# --lookup N instead times name lookups in a pool of N volumes (no fio): N files created through
# the view, then `stat` of each (a fresh lookup of an open volume) and of N missing names.
set -euo pipefail
SIZE=1G; RUNTIME=15; DIR=${BENCH_DIR:-/var/tmp/hlfs-bench-fuse}; ONLY=; LOOKUP=; FUSE_FIRST=
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2;;
    --runtime) RUNTIME=$2; shift 2;;
    --dir) DIR=$2; shift 2;;
    --only) ONLY=$2; shift 2;;
    --lookup) LOOKUP=$2; shift 2;;
    # Which hlfsd path runs first (the page cache and the disk are not quite the same after).
    --fuse-first) FUSE_FIRST=1; shift;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
. "$(dirname "$0")/bench-lib.sh"
bench_require bench-fuse fio nbdkit python3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bench_hlfsd "$ROOT"
SOCK=$DIR/nbd.sock
MNT=$DIR/mnt
# A view left mounted by an earlier run must go before anything is removed: rm -rf through a
# live view would delete its volumes.
umount -l "$MNT" 2>/dev/null || true
if grep -q " $MNT " /proc/self/mountinfo; then echo "bench-fuse: $MNT is still mounted" >&2; exit 1; fi
rm -rf "$DIR"; mkdir -p "$DIR"
PID=
stop() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi
  rm -f "$SOCK"
}
trap stop EXIT

# name|fio-args (direct I/O; the sequential writes lay the data down for the reads)
TESTS=(
  "seqwrite1M|--rw=write --bs=1M --iodepth=8"
  "seqread1M|--rw=read --bs=1M --iodepth=8"
  "randwrite4K|--rw=randwrite --bs=4k --iodepth=32 --time_based --runtime=$RUNTIME"
  "randread4K|--rw=randread --bs=4k --iodepth=32 --time_based --runtime=$RUNTIME"
)
RESULTS=$DIR/results.txt; : > "$RESULTS"
run_fio() { # label, fio target arguments...
  local label=$1; shift
  for t in "${TESTS[@]}"; do
    local name=${t%%|*} args=${t#*|}
    # --only: the tests named (the reads need the sequential write first).
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then continue; fi
    # Dirty pages left by the previous job would be written back during this one (and throttle
    # it): each job starts with the page cache clean, whichever server ran before.
    sync
    # shellcheck disable=SC2086
    fio --name="$name" "$@" --size="$SIZE" --direct=1 $args \
        --output-format=json --output="$DIR/$label-$name.json" >/dev/null
    python3 - "$DIR/$label-$name.json" "$label" "$name" >> "$RESULTS" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
ddir = "read" if j["read"]["io_bytes"] > 0 else "write"
d = j[ddir]
v = d["bw_bytes"] / 2**20 if "1M" in sys.argv[3] else d["iops"]
print(sys.argv[2], sys.argv[3], round(v, 1))
PY
    echo "  $label $name: $(tail -1 "$RESULTS" | cut -d' ' -f3)" >&2
  done
}

if [ -n "$LOOKUP" ]; then
  "$HLFSD" --data-dir "$DIR/hlfs-data" --runtime-dir "$DIR/hlfs-run" --nbd-socket "$SOCK" \
    --fuse-mount "$MNT" >/dev/null 2>"$DIR/hlfsd.log" & PID=$!
  wait_sock "$SOCK"
  python3 - "$MNT/pools/default" "$LOOKUP" <<'PY'
import os, sys, time
pool, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
for i in range(n):
    os.close(os.open(f"{pool}/v{i:05}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
create = (time.perf_counter() - t) / n
time.sleep(1.5)  # the kernel's cached entries (1 s) expire: every stat below is a lookup
def per_call(names):
    t = time.perf_counter()
    for p in names:
        try:
            os.stat(p)
        except FileNotFoundError:
            pass
    return (time.perf_counter() - t) / len(names) * 1e6
hit = per_call([f"{pool}/v{i:05}" for i in range(n)])
miss = per_call([f"{pool}/missing{i:05}" for i in range(n)])
print(f"| {n} | {create*1e3:.2f} ms | {hit:.0f} us | {miss:.0f} us |")
PY
  exit 0
fi

echo "nbdkit file" >&2
truncate -s "$SIZE" "$DIR/disk.img"
nbdkit --foreground -U "$SOCK" file file="$DIR/disk.img" & PID=$!
wait_sock "$SOCK"; run_fio nbdkit-file --ioengine=nbd --uri="nbd+unix:///?socket=$SOCK"
stop; rm -f "$DIR/disk.img"

# Each path gets a freshly started hlfsd on the same data directory, so that neither runs while
# the other's writes are still being sealed and synced (what the second of two jobs on one
# daemon meets); both volumes exist from the first start.
start_hlfsd() {
  "$HLFSD" --data-dir "$DIR/hlfs-data" --runtime-dir "$DIR/hlfs-run" --nbd-socket "$SOCK" \
    --fuse-mount "$MNT" --create-volume "default/nbd:$SIZE" --create-volume "default/fuse:$SIZE" \
    >/dev/null 2>>"$DIR/hlfsd.log" & PID=$!
  wait_sock "$SOCK"
}
run_nbd() { start_hlfsd; run_fio hlfs-nbd --ioengine=nbd --uri="nbd+unix:///default/nbd?socket=$SOCK"; stop; }
run_fuse() { start_hlfsd; run_fio hlfs-fuse --ioengine=libaio --filename="$MNT/pools/default/fuse"; stop; }
echo "hlfsd: NBD export and FUSE view, one daemon start each" >&2
if [ -n "$FUSE_FIRST" ]; then run_fuse; run_nbd; else run_nbd; run_fuse; fi

python3 - "$RESULTS" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    s, t, v = line.split()
    rows.setdefault(t, {})[s] = float(v)
servers = ["nbdkit-file", "hlfs-nbd", "hlfs-fuse"]
print("| test | " + " | ".join(servers) + " | FUSE / hlfs NBD |")
print("|---" * (len(servers) + 2) + "|")
for t, r in rows.items():
    unit = "MiB/s" if "1M" in t else "IOPS"
    print(f"| {t} ({unit}) | " + " | ".join(f"{r[s]:.0f}" for s in servers)
          + f" | {r['hlfs-fuse']/r['hlfs-nbd']:.2f}x |")
PY
