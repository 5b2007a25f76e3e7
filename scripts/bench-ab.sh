#!/usr/bin/env bash
# A/B of two hlfsd builds (issue 16): runs alternate base and new (ABBA: base first in odd
# rounds, new first in even ones), each on a fresh data directory and a fresh volume, with
# fio's nbd engine over a Unix socket.
# Usage: scripts/bench-ab.sh --base BIN --new BIN [--job seqwrite|randfilled|seqfilled4k]
#        [--rounds 2] [--size 1G] [--dir DIR] [--sync] [--count-syscalls]
# Jobs: `seqwrite` = 1M writes at QD8 over the volume; `randfilled` = 4K random writes at QD32
# over the volume (fio's random map: every block once), then 1M sequential reads at QD8 of the
# whole volume, three times over (the figure; the fill's IOPS are printed too); `seqfilled4k`
# = the same after a sequential fill in 4K writes at QD32 (each write a record of its own).
# `--sync` runs `sync` before each fio job. `--count-syscalls` counts hlfsd's preadv and
# pread64 calls during the measured job (perf stat on the syscall tracepoints; needs perf and
# root).
# Prints one line per run: round, build, job, figure (MiB/s), and the syscalls if counted.
set -euo pipefail
JOB=seqwrite; ROUNDS=2; SIZE=1G; DIR=/var/tmp/hlfs-bench-ab; SYNC=0; COUNT=0; BASE=; NEW=
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE=$2; shift 2;;
    --new) NEW=$2; shift 2;;
    --job) JOB=$2; shift 2;;
    --rounds) ROUNDS=$2; shift 2;;
    --size) SIZE=$2; shift 2;;
    --dir) DIR=$2; shift 2;;
    --sync) SYNC=1; shift;;
    --count-syscalls) COUNT=1; shift;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
[ -x "$BASE" ] && [ -x "$NEW" ] || { echo "--base and --new must be hlfsd binaries" >&2; exit 2; }
case "$JOB" in seqwrite|randfilled|seqfilled4k) ;; *) echo "--job is seqwrite, randfilled or seqfilled4k" >&2; exit 2;; esac
. "$(dirname "$0")/bench-lib.sh"
bench_require bench-ab fio python3
SOCK=$DIR/nbd.sock
PID=
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi; }
trap stop EXIT

# fio with the nbd engine; prints MiB/s and IOPS of the job's direction.
fio_run() { # name args...
  local name=$1; shift
  if [ "$SYNC" = 1 ]; then sync; fi
  fio --name="$name" --ioengine=nbd --uri="nbd+unix:///default/bench?socket=$SOCK" --size="$SIZE" \
      "$@" --output-format=json --output="$DIR/$name.json" >/dev/null
  python3 - "$DIR/$name.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
print(round(d["bw_bytes"] / 2**20), round(d["iops"]))
PY
}

# Runs the measured job, counting hlfsd's read syscalls meanwhile if asked.
measured() { # name args...
  if [ "$COUNT" = 1 ]; then
    perf stat -x, -e syscalls:sys_enter_preadv,syscalls:sys_enter_pread64 -p "$PID" \
      -o "$DIR/syscalls.txt" & local perf=$!
    sleep 0.2
  fi
  local out; out=$(fio_run "$@")
  if [ "$COUNT" = 1 ]; then
    kill -INT $perf; wait $perf 2>/dev/null || true
    out="$out $(awk -F, '/preadv/ {v=$1} /pread64/ {p=$1} END {printf "preadv=%s pread64=%s", v, p}' "$DIR/syscalls.txt")"
  fi
  echo "$out"
}

for round in $(seq "$ROUNDS"); do
  order="base new"; [ $((round % 2)) = 0 ] && order="new base"
  for build in $order; do
    bin=$BASE; [ $build = new ] && bin=$NEW
    rm -rf "$DIR"; mkdir -p "$DIR"
    "$bin" --no-fuse --data-dir "$DIR/data" --runtime-dir "$DIR/run" --nbd-socket "$SOCK" \
      --create-volume "default/bench:$SIZE" >/dev/null 2>>"$DIR.hlfsd.log" & PID=$!
    for _ in $(seq 200); do [ -S "$SOCK" ] && break; sleep 0.05; done
    [ -S "$SOCK" ] || { echo "hlfsd did not start" >&2; exit 1; }
    case "$JOB" in
      seqwrite)
        set -- $(measured seqwrite --rw=write --bs=1M --iodepth=8)
        echo "round $round $build seqwrite1M ${1} MiB/s ${*:3}";;
      randfilled)
        set -- $(fio_run randfill --rw=randwrite --bs=4k --iodepth=32)
        fill=$2
        set -- $(measured seqread --rw=read --bs=1M --iodepth=8 --loops=3)
        echo "round $round $build randfill4K ${fill} IOPS, seqread1M-randfilled ${1} MiB/s ${*:3}";;
      seqfilled4k)
        set -- $(fio_run seqfill --rw=write --bs=4k --iodepth=32)
        fill=$2
        set -- $(measured seqread --rw=read --bs=1M --iodepth=8 --loops=3)
        echo "round $round $build seqfill4K ${fill} IOPS, seqread1M-seqfilled4k ${1} MiB/s ${*:3}";;
    esac
    stop
  done
done
