#!/usr/bin/env bash
# Stops or starts one daemon of the HDFS that start-hdfs.sh started (for fault tests).
#   node.sh kill NAME      SIGKILL it (NAME: namenode, datanode0, datanode1, ...)
#   node.sh start NAME     start it again with the same configuration and data
#   node.sh wait-ready     wait until the NameNode answers, is out of safe mode and sees
#                          HDFS_NUM_DATANODES live DataNodes (default 3)
set -euo pipefail
HDFS_HOME=${HDFS_HOME:-${TMPDIR:-/tmp}/hlfs-hdfs}
NN_HTTP_PORT=${HDFS_NN_HTTP_PORT:-9870}
HEAP=${HDFS_HEAP:-512m}
cmd=${1:?usage: node.sh kill|start NAME | wait-ready}
name=${2:-}
pidf="$HDFS_HOME/run/$name.pid"
case "$cmd" in
  kill)
    pid=$(cat "$pidf")
    if kill -0 "$pid" 2>/dev/null && grep -q "org.apache.hadoop.hdfs" "/proc/$pid/cmdline" 2>/dev/null; then
      kill -KILL "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    fi
    ;;
  start)
    case "$name" in
      namenode) cls=(org.apache.hadoop.hdfs.server.namenode.NameNode) ;;
      datanode*) cls=(org.apache.hadoop.hdfs.server.datanode.DataNode -D "dfs.datanode.data.dir=file://$HDFS_HOME/data/dn${name#datanode}") ;;
      *) echo "unknown node $name" >&2; exit 2 ;;
    esac
    setsid nohup java -Xmx"$HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.net.preferIPv4Stack=true \
        -Dhadoop.log.dir="$HDFS_HOME/logs" -cp "$(cat "$HDFS_HOME/classpath")" "${cls[@]}" \
        >> "$HDFS_HOME/logs/$name.log" 2>&1 < /dev/null &
    echo $! > "$pidf"
    ;;
  wait-ready)
    for _ in $(seq 1 240); do
      if python3 - "$NN_HTTP_PORT" "${HDFS_NUM_DATANODES:-3}" <<'PY'
import json, sys, urllib.request
port, want = sys.argv[1], int(sys.argv[2])
def bean(q):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/jmx?qry=Hadoop:service=NameNode,name={q}", timeout=2) as r:
        return json.load(r)["beans"][0]
try:
    info = bean("NameNodeInfo")
    st = bean("FSNamesystemState")
    sys.exit(0 if info.get("Safemode", "") == "" and st["NumLiveDataNodes"] >= want else 1)
except Exception:
    sys.exit(1)
PY
      then exit 0; fi
      sleep 0.25
    done
    echo "NameNode not ready (or DataNodes missing) after 60 s" >&2; exit 1
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
