#!/usr/bin/env bash
# NBD server benchmark (issue #4): fio's nbd engine over Unix sockets against qemu-nbd (raw and
# qcow2, --cache=writeback), nbdkit's file plugin and hlfsd, one run, same disk.
# Usage: scripts/bench-nbd.sh [--size 1G] [--runtime 15] [--dir DIR] [--mode busy|quiet]
# Modes (issue 16): `quiet` runs `sync` before every job, so each starts with a clean page cache;
# `busy` (default) runs the jobs back to back, peers first, as on a host whose other guests keep
# the page cache dirty.
# Each server first runs the jobs of TESTS on one image (sequential fill first), then, on a fresh
# image, fills it with 4K random writes (every block once, QD32) and reads it sequentially
# ("seqread1M-randfilled": the weak spot of log-structured stores).
# Prints a Markdown table (figures: IOPS for 4K, MiB/s for 1M).
set -euo pipefail
SIZE=1G; RUNTIME=15; DIR=${BENCH_DIR:-/var/tmp/hlfs-bench-nbd}; MODE=busy
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE=$2; shift 2;;
    --size) SIZE=$2; shift 2;;
    --runtime) RUNTIME=$2; shift 2;;
    --dir) DIR=$2; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
. "$(dirname "$0")/bench-lib.sh"
bench_require bench-nbd fio qemu-img qemu-nbd nbdkit python3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bench_hlfsd "$ROOT"
rm -rf "$DIR"; mkdir -p "$DIR"
SOCK=$DIR/nbd.sock
bench_server_trap

# name:fio-args (common: nbd engine, direct, size, time-based except for the sequential fill)
TESTS=(
  "seqwrite1M|--rw=write --bs=1M --iodepth=8"
  "seqread1M|--rw=read --bs=1M --iodepth=8"
  "randwrite4K|--rw=randwrite --bs=4k --iodepth=32 --time_based --runtime=$RUNTIME"
  "randwrite4K-flush64|--rw=randwrite --bs=4k --iodepth=32 --fsync=64 --time_based --runtime=$RUNTIME"
  "randread4K|--rw=randread --bs=4k --iodepth=32 --time_based --runtime=$RUNTIME"
)
# On a fresh image: fill by 4K random writes (fio's random map: every block exactly once), then
# read sequentially. Only the read is reported.
RANDFILLED=(
  "randfill4K|--rw=randwrite --bs=4k --iodepth=32"
  "seqread1M-randfilled|--rw=read --bs=1M --iodepth=8"
)
case "$MODE" in busy|quiet) ;; *) echo "--mode is busy or quiet" >&2; exit 2;; esac
RESULTS=$DIR/results.txt; : > "$RESULTS"
run_fio() { # server uri jobs...
  local server=$1 uri=$2; shift 2
  for t in "$@"; do
    local name=${t%%|*} args=${t#*|}
    if [ "$MODE" = quiet ]; then sync; fi
    # shellcheck disable=SC2086
    fio --name="$name" --ioengine=nbd --uri="$uri" --size="$SIZE" $args \
        --output-format=json --output="$DIR/$server-$name.json" >/dev/null
    python3 - "$DIR/$server-$name.json" "$server" "$name" >> "$RESULTS" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
ddir = "read" if j["read"]["io_bytes"] > 0 else "write"
d = j[ddir]
v = d["bw_bytes"] / 2**20 if "1M" in sys.argv[3] else d["iops"]
print(sys.argv[2], sys.argv[3], round(v, 1))
PY
    echo "  $server $name: $(tail -1 "$RESULTS" | cut -d' ' -f3)" >&2
  done
}

start_server() { # server image
  case "$1" in
    qemu-nbd-raw)
      qemu-img create -q -f raw "$DIR/disk.raw" "$SIZE"
      qemu-nbd -f raw --cache=writeback --aio=threads -k "$SOCK" -t -e 8 "$DIR/disk.raw" & PID=$!
      URI="nbd+unix:///?socket=$SOCK";;
    qemu-nbd-qcow2)
      qemu-img create -q -f qcow2 "$DIR/disk.qcow2" "$SIZE"
      qemu-nbd -f qcow2 --cache=writeback -k "$SOCK" -t -e 8 "$DIR/disk.qcow2" & PID=$!
      URI="nbd+unix:///?socket=$SOCK";;
    nbdkit-file)
      truncate -s "$SIZE" "$DIR/disk.img"
      nbdkit --foreground -U "$SOCK" file file="$DIR/disk.img" & PID=$!
      URI="nbd+unix:///?socket=$SOCK";;
    hlfs)
      "$HLFSD" --no-fuse --data-dir "$DIR/hlfs-data" --runtime-dir "$DIR/hlfs-run" --nbd-socket "$SOCK" \
        --create-volume "default/bench:$SIZE" >/dev/null 2>>"$DIR/hlfsd.log" & PID=$!
      URI="nbd+unix:///default/bench?socket=$SOCK";;
  esac
  wait_sock "$SOCK"
}
drop_images() { rm -rf "$DIR/disk.raw" "$DIR/disk.qcow2" "$DIR/disk.img" "$DIR/hlfs-data" "$DIR/hlfs-run"; }

SERVERS=(qemu-nbd-raw qemu-nbd-qcow2 nbdkit-file hlfs)
echo "mode $MODE" >&2
for server in "${SERVERS[@]}"; do
  echo "$server" >&2
  start_server "$server"; run_fio "$server" "$URI" "${TESTS[@]}"; stop; drop_images
  start_server "$server"; run_fio "$server" "$URI" "${RANDFILLED[@]}"; stop; drop_images
done

python3 - "$RESULTS" "$MODE" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    s, t, v = line.split()
    if t == "randfill4K":
        continue
    rows.setdefault(t, {})[s] = float(v)
servers = ["qemu-nbd-raw", "qemu-nbd-qcow2", "nbdkit-file", "hlfs"]
print(f"mode: {sys.argv[2]}")
print("| test | " + " | ".join(servers) + " | hlfs / qcow2 | hlfs / best peer |")
print("|---" * (len(servers) + 3) + "|")
for t, r in rows.items():
    unit = "MiB/s" if "1M" in t else "IOPS"
    best = max(r[s] for s in servers[:3])
    print(f"| {t} ({unit}) | " + " | ".join(f"{r[s]:.0f}" for s in servers)
          + f" | {r['hlfs']/r['qemu-nbd-qcow2']:.2f}x | {r['hlfs']/best:.2f}x |")
PY
