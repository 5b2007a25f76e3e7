#!/usr/bin/env bash
# Idle-time relayout through NBD (issue 16): hlfsd with `[cleaner] relayout_idle_ms` set gets a
# fresh volume filled by 4K random writes at QD32 (fio's random map: every block once), which
# is then read sequentially (1M, QD8, the whole volume three times over) right away, and again
# once hlfsd has relaid the idle volume out (it logs "idle volume relaid out"). nbdkit's file
# plugin gets the same fill and reads, for reference (its file is contiguous).
# Usage: HLFSD=path scripts/bench-relayout.sh [--size 1G] [--idle-ms 8000] [--dir DIR]
# (reads do not end the idle time: keep --idle-ms above the first read's duration)
# Prints MiB/s: nbdkit, hlfsd before the relayout, hlfsd after it, and how long the sweep took.
set -euo pipefail
SIZE=1G; IDLE=8000; DIR=/var/tmp/hlfs-bench-relayout
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2;;
    --idle-ms) IDLE=$2; shift 2;;
    --dir) DIR=$2; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
. "$(dirname "$0")/bench-lib.sh"
bench_require bench-relayout fio nbdkit python3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bench_hlfsd "$ROOT"
rm -rf "$DIR"; mkdir -p "$DIR"
SOCK=$DIR/nbd.sock
bench_server_trap
fio_mib() { # uri name args...: prints MiB/s of the job's direction
  local uri=$1 name=$2; shift 2
  fio --name="$name" --ioengine=nbd --uri="$uri" --size="$SIZE" "$@" \
      --output-format=json --output="$DIR/$name.json" >/dev/null
  python3 - "$DIR/$name.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
print(round(d["bw_bytes"] / 2**20))
PY
}
FILL=(--rw=randwrite --bs=4k --iodepth=32)
READ=(--rw=read --bs=1M --iodepth=8 --loops=3)

truncate -s "$SIZE" "$DIR/disk.img"
nbdkit --foreground -U "$SOCK" file file="$DIR/disk.img" & PID=$!
wait_sock "$SOCK"
URI="nbd+unix:///?socket=$SOCK"
fio_mib "$URI" nbdkit-fill "${FILL[@]}" >/dev/null
nbdkit=$(fio_mib "$URI" nbdkit-read "${READ[@]}")
stop; rm -f "$DIR/disk.img"

printf '[cleaner]\nrelayout_idle_ms = %s\n' "$IDLE" > "$DIR/hlfsd.toml"
"$HLFSD" --config "$DIR/hlfsd.toml" --no-fuse --data-dir "$DIR/hlfs-data" --runtime-dir "$DIR/hlfs-run" \
  --nbd-socket "$SOCK" --create-volume "default/bench:$SIZE" >/dev/null 2>"$DIR/hlfsd.log" & PID=$!
wait_sock "$SOCK"
URI="nbd+unix:///default/bench?socket=$SOCK"
fio_mib "$URI" hlfs-fill "${FILL[@]}" >/dev/null
before=$(fio_mib "$URI" hlfs-read-before "${READ[@]}")
start=$(date +%s.%N)
for _ in $(seq 1200); do
  grep -q "idle volume relaid out" "$DIR/hlfsd.log" && break
  sleep 0.1
done
grep -q "idle volume relaid out" "$DIR/hlfsd.log" || { echo "no relayout within 120 s" >&2; exit 1; }
sweep=$(python3 -c "import time; print(round(time.time() - $start, 1))")
after=$(fio_mib "$URI" hlfs-read-after "${READ[@]}")
echo "seqread1M-randfilled MiB/s: nbdkit $nbdkit, hlfs before relayout $before, hlfs after relayout $after (idle ${IDLE} ms, then the sweep: ${sweep} s after the first read ended)"
