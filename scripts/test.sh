#!/usr/bin/env bash
# The test command: installs what the tests need, checks formatting and lints, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The Debian package: built (release), installed, run by hand, removed and purged.
bash scripts/test-deb.sh
# The HDFS tests run against a real HDFS that this starts (and stops) around the test run.
bash scripts/with-hdfs.sh cargo nextest run --workspace --no-fail-fast
