#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, cargo-fuzz + libFuzzer) for a given time each, on the stable
# toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz use its unstable flags).
#
#   scripts/fuzz.sh [--time SECONDS] [--jobs N] [--asan] [--no-merge] [TARGET...]
#
# --time      seconds per target (default 60)
# --jobs      libFuzzer worker processes per target (default 1)
# --asan      build with AddressSanitizer (default: no sanitizer; the code is safe Rust, and
#             overflow checks and debug assertions are on either way)
# --no-merge  keep new inputs in fuzz/new/TARGET instead of merging them into the corpus
#
# New inputs a run finds go to fuzz/new/TARGET; afterwards those that add coverage are merged
# into fuzz/corpus/TARGET (libFuzzer -merge=1, so the committed corpus stays minimal). A crash,
# panic, timeout or OOM input is copied to fuzz/regressions/TARGET/, where the workspace test
# (fuzz-targets/tests/corpus.rs) replays it: commit it with the fix. Targets default to all.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz="$root/fuzz"
time=60
jobs=1
sanitizer=none
merge=1
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --time) time=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --asan) sanitizer=address; shift ;;
        --no-merge) merge=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$fuzz"
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

# -a: debug assertions and overflow checks, as in the tests.
build=(--sanitizer "$sanitizer" -a --release)
cargo fuzz build "${build[@]}"

status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "new/$t" "corpus/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    echo "== $t: ${time}s"
    start=$(date +%s)
    set +e
    cargo fuzz run "${build[@]}" "$t" "new/$t" "corpus/$t" -- \
        -max_total_time="$time" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
        -jobs="$jobs" -workers="$jobs" -artifact_prefix="artifacts/$t/" \
        >"$log" 2>&1
    rc=$?
    set -e
    secs=$(( $(date +%s) - start ))
    execs=$(grep -h 'stat::number_of_executed_units' "$log" fuzz-*.log 2>/dev/null \
        | awk '{s += $2} END {print s + 0}')
    rm -f fuzz-*.log
    found=0
    for a in "artifacts/$t"/crash-* "artifacts/$t"/timeout-* "artifacts/$t"/oom-* \
             "artifacts/$t"/leak-*; do
        [ -f "$a" ] || continue
        mkdir -p "regressions/$t"
        cp "$a" "regressions/$t/"
        rm "$a"
        found=$((found + 1))
        echo "   finding: fuzz/regressions/$t/$(basename "$a")"
    done
    if [ "$rc" -ne 0 ] && [ "$found" -eq 0 ]; then
        echo "   libFuzzer exited $rc without an artifact; see fuzz/$log" >&2
        tail -20 "$log" >&2
        status=1
    fi
    [ "$found" -gt 0 ] && status=1
    if [ "$merge" -eq 1 ] && [ -n "$(ls -A "new/$t")" ]; then
        before=$(ls "corpus/$t" | wc -l)
        cargo fuzz run "${build[@]}" "$t" "corpus/$t" "new/$t" -- -merge=1 \
            -timeout=30 -rss_limit_mb=4096 >"artifacts/$t/last-merge.log" 2>&1 || true
        rm -rf "new/$t"
        echo "   corpus: $before -> $(ls "corpus/$t" | wc -l) inputs"
    fi
    summary+=("$t: ${secs}s, $execs runs, $found findings")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
