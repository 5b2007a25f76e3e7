#!/usr/bin/env bash
# Fault campaign (issue 17): kill -9 hlfsd under verified NBD load, restart, verify; repeat.
#
# Usage: scripts/fault-campaign.sh --cycles N [--qd 1|32] [--dir DIR] [--flush-every N]
#                                  [--size 32M] [--segment-size 256K] [--cleaner background|inline]
#                                  [--no-build] [--resume]
#
# Per cycle: `fault-load run` writes over NBD (QD1 or QD32, a FLUSH every --flush-every writes)
# while a side loop takes, clones and deletes snapshots with `hlfs`; after a random 0.5-3 s
# hlfsd is killed with SIGKILL and started again, and `fault-load verify` reads the whole
# volume over NBD and checks it against the test-side journal (every flushed write there, no
# garbage, at QD1 a prefix of the writes sent). The volume
# (32 MiB, 256 KiB segments, cleaner tuned to run all the time) persists across cycles, so any
# damage accumulates. After the last cycle: a clean stop (SIGTERM), a restart and a last
# verify.
#
# Exit status 0 only if every verification passed. On a violation the campaign stops, kills
# hlfsd and keeps DIR (data dir, state + journal, logs) plus a copy in DIR/violation-cN.
# Summary line: "campaign: cycles=... violations=... writes_sent=... writes_acked=..."
# --flush-every: default a random 8, 64 or 512 per cycle. --resume: keep DIR (volume, checker
# state, logs) and go on from where an earlier run stopped (the first verify covers its crash).
set -euo pipefail
CYCLES=10; QD=1; DIR=; FLUSH_EVERY=; SIZE=32M; SEG=256K; BUILD=1; RESUME=0; CLEANER=background
while [ $# -gt 0 ]; do
  case "$1" in
    --cycles) CYCLES=$2; shift 2;;
    --qd) QD=$2; shift 2;;
    --dir) DIR=$2; shift 2;;
    --flush-every) FLUSH_EVERY=$2; shift 2;;
    --size) SIZE=$2; shift 2;;
    --segment-size) SEG=$2; shift 2;;
    --cleaner) CLEANER=$2; shift 2;;
    --no-build) BUILD=0; shift;;
    --resume) RESUME=1; shift;;
    -h|--help) sed -n '2,21p' "$0"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
DIR=${DIR:-/var/tmp/hlfs-fault-qd$QD}
# without --flush-every each cycle picks 8, 64 or 512 at random (short and long unflushed tails)
FLUSH_CHOICES=(8 64 512)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ $BUILD = 1 ]; then
  cargo build --release --bin hlfsd --bin hlfs --example fault-load -p hlfs-agent -p hlfs-cli \
    --manifest-path "$ROOT/Cargo.toml" >&2
fi
T=${CARGO_TARGET_DIR:-$ROOT/target}/release
HLFSD=$T/hlfsd; HLFS_BIN=$T/hlfs; LOAD=$T/examples/fault-load

if [ $RESUME = 0 ]; then rm -rf "$DIR"; fi
mkdir -p "$DIR/logs"
RUN=$DIR/run; NBD=$RUN/nbd.sock; DBUS=$RUN/dbus.sock; VOL=default/fault
cat > "$DIR/hlfsd.toml" <<EOF
# a cleaner that never rests: clean as soon as the log is 5% above the volume's size or 10% of
# it is reclaimable, look every 20 ms, copy up to 32 MiB/s in 256 KiB steps (--cleaner inline:
# no background cleaner, inline passes at segment seals only)
[cleaner]
background = $([ "$CLEANER" = inline ] && echo false || echo true)
space_overhead = 0.05
max_live_ratio = 0.95
max_segments_per_pass = 4
rate = "32M"
reclaimable_ratio = 0.1
interval_ms = 20
step = "256K"
EOF
hlfs() { "$HLFS_BIN" --socket "$DBUS" "$@"; }
LOADARGS=(--socket "$NBD" --export "$VOL" --dir "$DIR/state")

PID=; SNAP_PID=; LOAD_PID=
cleanup() {
  [ -n "$SNAP_PID" ] && kill "$SNAP_PID" 2>/dev/null || true
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true
}
trap cleanup EXIT

start_hlfsd() {
  "$HLFSD" --data-dir "$DIR/data" --runtime-dir "$RUN" --config "$DIR/hlfsd.toml" --no-fuse \
    >>"$DIR/logs/hlfsd.log" 2>&1 & PID=$!
  for _ in $(seq 400); do
    [ -S "$NBD" ] && [ -S "$DBUS" ] && hlfs pool list >/dev/null 2>&1 && return 0
    kill -0 "$PID" 2>/dev/null || { echo "hlfsd died at start-up (see $DIR/logs/hlfsd.log)" >&2; exit 1; }
    sleep 0.025
  done
  echo "hlfsd did not come up" >&2; exit 1
}

# snapshots and clones while the load runs: a snapshot every ~50 ms, every third one cloned
# (clone deleted again right away), only the newest two kept
snap_loop() {
  local c=$1 i=0
  while :; do
    i=$((i + 1))
    hlfs snapshot create "$VOL%c${c}s$i" >/dev/null 2>&1 && echo snapshot >>"$DIR/logs/snap.log" || true
    if [ $((i % 3)) = 0 ]; then
      hlfs clone "$VOL%c${c}s$i" "default/clone-c${c}s$i" >/dev/null 2>&1 && echo clone >>"$DIR/logs/snap.log" &&
        hlfs volume delete "default/clone-c${c}s$i" >/dev/null 2>&1 || true
    fi
    [ $i -gt 2 ] && { hlfs snapshot delete "$VOL%c${c}s$((i - 2))" >/dev/null 2>&1 || true; }
    sleep 0.05
  done
}

# after a restart: drop clones and all snapshots but the newest two left by the killed cycle
tidy() {
  local v s
  for v in $(hlfs --json volume list 2>/dev/null | jq -r '.[] | select(.name | startswith("clone-")) | .name'); do
    hlfs volume delete "default/$v" >/dev/null 2>&1 || true
  done
  for s in $(hlfs --json snapshot list "$VOL" 2>/dev/null | jq -r 'sort_by(.created, .sequence) | .[:-2][] | .name'); do
    hlfs snapshot delete "$VOL%$s" >/dev/null 2>&1 || true
  done
}

VIOL=0; SENT=0; ACKED=0; DONE=0; VERIFIED=0
verify() { # label
  local out rc=0
  out=$("$LOAD" verify "${LOADARGS[@]}" 2>&1) || rc=$?
  echo "$1 $out" >>"$DIR/logs/verify.log"
  VERIFIED=$((VERIFIED + 1))
  if [ $rc != 0 ]; then
    VIOL=$((VIOL + 1))
    echo "VIOLATION at $1 (rc $rc):" >&2; echo "$out" | head -60 >&2
    kill -9 "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=
    mkdir -p "$DIR/violation-$1"
    cp -a "$DIR/data" "$DIR/state" "$DIR/logs" "$DIR/violation-$1/"
    echo "campaign: cycles=$DONE violations=$VIOL writes_sent=$SENT writes_acked=$ACKED qd=$QD dir=$DIR (evidence in $DIR/violation-$1)"
    exit 1
  fi
}

start_hlfsd
if [ $RESUME = 0 ] || ! hlfs volume info "$VOL" >/dev/null 2>&1; then
  hlfs volume create "$VOL" "$SIZE" --segment-size "$SEG" >/dev/null
fi
T0=$(date +%s)
verify initial
for c in $(seq 1 "$CYCLES"); do
  tidy
  fe=${FLUSH_EVERY:-${FLUSH_CHOICES[$((RANDOM % 3))]}}
  "$LOAD" run "${LOADARGS[@]}" --qd "$QD" --flush-every "$fe" \
    >"$DIR/logs/run.out" 2>&1 & LOAD_PID=$!
  # the random delay starts once the load is connected (its journal exists): on a busy machine
  # starting it can take longer than the shortest delay
  for _ in $(seq 800); do
    [ -e "$DIR/state/journal" ] || ! kill -0 "$LOAD_PID" 2>/dev/null && break
    sleep 0.025
  done
  snap_loop "$c" & SNAP_PID=$!
  ms=$((500 + RANDOM % 2501))
  sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=
  kill "$SNAP_PID" 2>/dev/null || true; wait "$SNAP_PID" 2>/dev/null || true; SNAP_PID=
  rc=0; wait "$LOAD_PID" || rc=$?; LOAD_PID=
  cat "$DIR/logs/run.out" >>"$DIR/logs/run.log"
  if [ $rc != 0 ]; then echo "load generator failed (rc $rc) in cycle $c:" >&2; cat "$DIR/logs/run.out" >&2; exit 1; fi
  line=$(grep '^run ' "$DIR/logs/run.out" || true)
  s=$(sed -n 's/.* sent=\([0-9]*\).*/\1/p' <<<"$line"); a=$(sed -n 's/.* acked=\([0-9]*\).*/\1/p' <<<"$line")
  SENT=$((SENT + ${s:-0})); ACKED=$((ACKED + ${a:-0})); DONE=$c
  if [ $((c % 25)) = 0 ]; then
    echo "cycle $c/$CYCLES: violations=$VIOL sent=$SENT acked=$ACKED elapsed=$(( $(date +%s) - T0 ))s $(date -u +%H:%M:%S)" >&2
  fi
  start_hlfsd
  verify "c$c"
done
# a clean stop and restart must keep everything too
kill -TERM "$PID"; wait "$PID" || { echo "hlfsd did not stop cleanly" >&2; VIOL=$((VIOL + 1)); }; PID=
start_hlfsd
verify after-clean-restart
hlfs --json volume info "$VOL" >"$DIR/logs/volume-info.json" 2>&1 || true
PASSES=$(grep -c 'cleaning pass done' "$DIR/logs/hlfsd.log" || true)
SNAPS=$(grep -c '^snapshot' "$DIR/logs/snap.log" || true); CLONES=$(grep -c '^clone' "$DIR/logs/snap.log" || true)
echo "campaign: cycles=$DONE violations=$VIOL writes_sent=$SENT writes_acked=$ACKED qd=$QD flush_every=${FLUSH_EVERY:-random} cleaner=$CLEANER segment_size=$SEG verifications=$VERIFIED cleaner_passes=$PASSES snapshots=$SNAPS clones=$CLONES secs=$(( $(date +%s) - T0 )) dir=$DIR"
[ $VIOL = 0 ]
