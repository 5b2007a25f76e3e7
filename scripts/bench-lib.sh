# What the benchmark scripts share (sourced, not run): checking for their tools, the hlfsd
# they measure, and waiting for a server's socket.

# bench_require NAME TOOL...: exits with a message naming the first missing tool.
bench_require() {
  local name=$1; shift
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "$name: $t is not installed" >&2; exit 1; }
  done
}

# bench_hlfsd ROOT: sets HLFSD to a release build of this tree (built now), unless HLFSD is
# already set (HLFSD=path compares another build without rebuilding).
bench_hlfsd() {
  local root=$1
  if [ -z "${HLFSD:-}" ]; then
    cargo build --release --bin hlfsd --manifest-path "$root/Cargo.toml" >&2
    HLFSD=${CARGO_TARGET_DIR:-$root/target}/release/hlfsd
  fi
}

# wait_sock PATH: waits up to 20 s for a server to create its Unix socket.
wait_sock() {
  local _
  for _ in $(seq 400); do [ -S "$1" ] && return 0; sleep 0.05; done
  echo "no socket $1" >&2
  exit 1
}

# bench_server_trap: `stop` ends the server whose pid is in PID (if any) and removes SOCK; it
# runs at exit, also on failure. Call after setting SOCK.
bench_server_trap() {
  PID=
  stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi; rm -f "$SOCK"; }
  trap stop EXIT
}
