#!/usr/bin/env bash
# Runs a command with a real HDFS up: starts HDFS (3 DataNodes, replication 3) on loopback,
# exports HADOOP_CONF_DIR, HDFS_HOME and HLFS_TEST_HDFS_URL, runs "$@", then stops HDFS (also on
# failure or interrupt) and exits with the command's status.
#
#   scripts/with-hdfs.sh cargo nextest run --workspace
#
# Settings (environment): HDFS_HOME (default ${TMPDIR:-/tmp}/hlfs-hdfs), HDFS_NN_PORT (9000),
# HDFS_NN_HTTP_PORT (9870), HDFS_NUM_DATANODES (3), HDFS_REPLICATION (3).
# If HLFS_TEST_HDFS_URL is already set, HDFS is assumed to be running and is left alone.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ $# -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi
if [ -n "${HLFS_TEST_HDFS_URL:-}" ]; then
    exec "$@"
fi
export HDFS_HOME=${HDFS_HOME:-${TMPDIR:-/tmp}/hlfs-hdfs}
export HDFS_NUM_DATANODES=${HDFS_NUM_DATANODES:-3}
export HDFS_REPLICATION=${HDFS_REPLICATION:-3}
# Small blocks so that tests cross block boundaries.
export HDFS_BLOCK_SIZE=${HDFS_BLOCK_SIZE:-16777216}
# The NameNode's own dead-node detection (a dead DataNode is declared dead after 10.5 min):
# writers must not depend on it (the patched hdfs-native drops a failed DataNode from a write
# pipeline and places new blocks without it). HDFS_EXTRA_CONF adds hdfs-site settings.
export HDFS_EXTRA_CONF=${HDFS_EXTRA_CONF:-}
# A previous run killed midway may have left one behind: stop only what it recorded.
bash "$here/hdfs/stop-hdfs.sh" >/dev/null 2>&1 || true
env_out=$(bash "$here/hdfs/start-hdfs.sh")
eval "$env_out"
export HLFS_TEST_HDFS_URL="$HDFS_URL"
export HLFS_HDFS_SCRIPTS="$here/hdfs"
cleanup() { bash "$here/hdfs/stop-hdfs.sh" >&2 || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM
set +e
"$@"
status=$?
set -e
exit $status
