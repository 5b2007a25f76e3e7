#!/usr/bin/env bash
# Start a real Apache HDFS (NameNode + DataNode(s), Hadoop 2.7.3) on loopback, for HLFS's HDFS
# backend tests and benchmark (scripts/with-hdfs.sh wraps it). The project's own copy: it needs
# nothing outside this repository but Java, python3 and PyPI.
#
# Needs only: Java >= 8 (Debian's openjdk-17-jre-headless is installed if java is missing),
# python3 with venv + pip (for PyPI), tar. No Maven Central, no apache.org downloads:
# the Hadoop 2.7.3 jars come from the pyspark==2.4.8 sdist on PyPI (it bundles
# hadoop-hdfs-2.7.3.jar, which holds the NameNode and DataNode server classes).
#
# Environment (all optional):
#   HDFS_HOME          install + state dir           (default ${TMPDIR:-/tmp}/hlfs-hdfs)
#   HDFS_NN_PORT       NameNode RPC port              (default 9000)
#   HDFS_NN_HTTP_PORT  NameNode HTTP (JMX) port       (default 9870)
#   HDFS_NUM_DATANODES number of DataNode processes   (default 1; each ~150-200 MB RSS)
#   HDFS_REPLICATION   default dfs.replication        (default 1; <= HDFS_NUM_DATANODES)
#   HDFS_BLOCK_SIZE    default dfs.blocksize          (default 16777216)
#   HDFS_HEAP          -Xmx for each JVM              (default 512m)
#   HDFS_EXTRA_CONF    extra "key=value key=value" properties for hdfs-site.xml (e.g. fs.trash.interval=60)
#   HDFS_KEEP_DATA=1   keep an existing namespace instead of wiping it
#   HDFS_READY_TIMEOUT seconds to wait for readiness  (default 180)
#
# On success prints `export HADOOP_CONF_DIR=...` (hdfs-native reads fs.defaultFS from it)
# and the URL; exits non-zero with log tails on failure.
set -euo pipefail

HDFS_HOME=${HDFS_HOME:-${TMPDIR:-/tmp}/hlfs-hdfs}
NN_PORT=${HDFS_NN_PORT:-9000}
NN_HTTP_PORT=${HDFS_NN_HTTP_PORT:-9870}
NUM_DN=${HDFS_NUM_DATANODES:-1}
BLOCK_SIZE=${HDFS_BLOCK_SIZE:-16777216}
REPLICATION=${HDFS_REPLICATION:-1}
HEAP=${HDFS_HEAP:-512m}
READY_TIMEOUT=${HDFS_READY_TIMEOUT:-180}

PYSPARK_VERSION=2.4.8
PYSPARK_SHA256=3a19b71b8dc8dd91ebc943604a05e1ab01bce052456d42937035632d852d78dc
# Jars (from pyspark-2.4.8/deps/jars) that NameNode, DataNode and the hdfs CLI classes need, in classpath order.
JARS="hadoop-hdfs-2.7.3.jar hadoop-common-2.7.3.jar hadoop-auth-2.7.3.jar hadoop-annotations-2.7.3.jar
hadoop-mapreduce-client-core-2.7.3.jar log4j-1.2.17.jar slf4j-api-1.7.16.jar slf4j-log4j12-1.7.16.jar
commons-logging-1.1.3.jar guava-14.0.1.jar protobuf-java-2.5.0.jar htrace-core-3.1.0-incubating.jar
jetty-6.1.26.jar jetty-util-6.1.26.jar javax.servlet-api-3.1.0.jar javax.ws.rs-api-2.0.1.jar
jackson-core-asl-1.9.13.jar jackson-mapper-asl-1.9.13.jar xercesImpl-2.9.1.jar xmlenc-0.52.jar
netty-all-4.1.47.Final.jar netty-3.9.9.Final.jar leveldbjni-all-1.8.jar commons-cli-1.2.jar
commons-codec-1.10.jar commons-io-2.4.jar commons-lang-2.6.jar commons-collections-3.2.2.jar
commons-configuration-1.6.jar commons-beanutils-1.9.4.jar commons-digester-1.8.jar commons-compress-1.20.jar
commons-math3-3.4.1.jar commons-httpclient-3.1.jar commons-net-3.1.jar gson-2.2.4.jar jsr305-1.3.9.jar
avro-1.8.2.jar paranamer-2.8.jar"

log() { echo "[start-hdfs $(date +%T)] $*" >&2; }

# ---------------------------------------------------------------- install (idempotent)
install_java() {
  if command -v java >/dev/null 2>&1; then return; fi
  log "java not found: installing openjdk-17-jre-headless from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq openjdk-17-jre-headless >/dev/null
}

install_jars() {
  local ok=1 j
  for j in $JARS; do [ -s "$HDFS_HOME/jars/$j" ] || ok=0; done
  if [ "$ok" = 1 ]; then return; fi
  local t0=$SECONDS tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/hdfs-install.XXXXXX")
  log "downloading pyspark==$PYSPARK_VERSION sdist (~220 MB) from PyPI for its Hadoop 2.7.3 jars"
  if ! python3 -m venv "$tmp/venv" >/dev/null 2>&1; then
    log "python3 venv unavailable: installing python3-venv from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$tmp/venv"
    python3 -m venv "$tmp/venv"
  fi
  # The sdist's setup.py needs wheel+setuptools and breaks under build isolation (new pypandoc), hence
  # --no-build-isolation in a venv that has them. --require-hashes pins the exact file.
  "$tmp/venv/bin/pip" install -q --disable-pip-version-check wheel setuptools
  echo "pyspark==$PYSPARK_VERSION --hash=sha256:$PYSPARK_SHA256" > "$tmp/req.txt"
  "$tmp/venv/bin/pip" download -q --disable-pip-version-check --no-cache-dir --no-deps \
      --no-build-isolation --require-hashes -r "$tmp/req.txt" -d "$tmp"
  local members=()
  for j in $JARS; do members+=("pyspark-$PYSPARK_VERSION/deps/jars/$j"); done
  tar xzf "$tmp/pyspark-$PYSPARK_VERSION.tar.gz" -C "$tmp" "${members[@]}"
  mkdir -p "$HDFS_HOME/jars"
  mv "$tmp/pyspark-$PYSPARK_VERSION/deps/jars/"*.jar "$HDFS_HOME/jars/"
  rm -rf "$tmp"
  log "installed $(ls "$HDFS_HOME/jars" | wc -l) jars ($(du -sh "$HDFS_HOME/jars" | cut -f1)) in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- config
write_conf() {
  local c="$HDFS_HOME/conf" d="$HDFS_HOME/data"
  mkdir -p "$c" "$HDFS_HOME/logs" "$HDFS_HOME/run" "$HDFS_HOME/bin" \
           "$HDFS_HOME/cp/webapps/hdfs" "$HDFS_HOME/cp/webapps/datanode" "$HDFS_HOME/cp/webapps/secondary"
  cat > "$c/core-site.xml" <<EOF
<?xml version="1.0"?>
<configuration>
  <property><name>fs.defaultFS</name><value>hdfs://127.0.0.1:$NN_PORT</value></property>
  <property><name>hadoop.tmp.dir</name><value>$d/tmp</value></property>
</configuration>
EOF
  cat > "$c/hdfs-site.xml" <<EOF
<?xml version="1.0"?>
<configuration>
  <property><name>dfs.replication</name><value>$REPLICATION</value></property>
  <property><name>dfs.blocksize</name><value>$BLOCK_SIZE</value></property>
  <property><name>dfs.namenode.fs-limits.min-block-size</name><value>4096</value></property>
  <property><name>dfs.namenode.name.dir</name><value>file://$d/name</value></property>
  <property><name>dfs.datanode.data.dir</name><value>file://$d/dn0</value></property>
  <property><name>dfs.namenode.rpc-address</name><value>127.0.0.1:$NN_PORT</value></property>
  <property><name>dfs.namenode.http-address</name><value>127.0.0.1:$NN_HTTP_PORT</value></property>
  <property><name>dfs.namenode.secondary.http-address</name><value>127.0.0.1:0</value></property>
  <property><name>dfs.datanode.address</name><value>127.0.0.1:0</value></property>
  <property><name>dfs.datanode.http.address</name><value>127.0.0.1:0</value></property>
  <property><name>dfs.datanode.ipc.address</name><value>127.0.0.1:0</value></property>
  <property><name>dfs.datanode.hostname</name><value>127.0.0.1</value></property>
  <property><name>dfs.namenode.datanode.registration.ip-hostname-check</name><value>false</value></property>
  <property><name>dfs.webhdfs.enabled</name><value>false</value></property>
  <property><name>dfs.permissions.enabled</name><value>true</value></property>
  <property><name>dfs.namenode.acls.enabled</name><value>true</value></property>
  <property><name>dfs.namenode.safemode.extension</name><value>0</value></property>
  <property><name>dfs.namenode.safemode.threshold-pct</name><value>0</value></property>
  <property><name>dfs.heartbeat.interval</name><value>1</value></property>
  <property><name>dfs.namenode.heartbeat.recheck-interval</name><value>10000</value></property>
$(for kv in ${HDFS_EXTRA_CONF:-}; do echo "  <property><name>${kv%%=*}</name><value>${kv#*=}</value></property>"; done)
</configuration>
EOF
  cat > "$c/log4j.properties" <<'EOF'
log4j.rootLogger=INFO,console
log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.target=System.err
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
EOF
  # classpath: conf dir, a dir holding empty webapps/{hdfs,datanode} (HttpServer2 insists they exist), jars
  local cp="$c:$HDFS_HOME/cp" j
  for j in $JARS; do cp="$cp:$HDFS_HOME/jars/$j"; done
  echo "$cp" > "$HDFS_HOME/classpath"
  # CLI helper: `hdfs-cli dfs -ls /`, `hdfs-cli dfsadmin -report`
  cat > "$HDFS_HOME/bin/hdfs-cli" <<EOF
#!/usr/bin/env bash
cmd=\${1:?usage: hdfs-cli dfs|dfsadmin|fsck ARGS...}; shift
case "\$cmd" in
  dfs) cls=org.apache.hadoop.fs.FsShell ;;
  dfsadmin) cls=org.apache.hadoop.hdfs.tools.DFSAdmin ;;
  fsck) cls=org.apache.hadoop.hdfs.tools.DFSck ;;
  *) cls=\$cmd ;;
esac
exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "\$(cat "$HDFS_HOME/classpath")" "\$cls" "\$@"
EOF
  chmod +x "$HDFS_HOME/bin/hdfs-cli"
}

# ---------------------------------------------------------------- start
jvm() { # jvm NAME CLASS ARGS...
  local name=$1; shift
  # setsid: own session, so stop-hdfs.sh kills exactly these processes by PID
  setsid nohup java -Xmx"$HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.net.preferIPv4Stack=true \
      -Dhadoop.log.dir="$HDFS_HOME/logs" -cp "$(cat "$HDFS_HOME/classpath")" "$@" \
      > "$HDFS_HOME/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$HDFS_HOME/run/$name.pid"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

jmx_ready() {
  python3 - "$NN_HTTP_PORT" "$NUM_DN" <<'EOF'
import json, sys, urllib.request
port, want = sys.argv[1], int(sys.argv[2])
def bean(q):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/jmx?qry={q}", timeout=2) as r:
        return json.load(r)["beans"][0]
try:
    st = bean("Hadoop:service=NameNode,name=FSNamesystemState")
    info = bean("Hadoop:service=NameNode,name=NameNodeInfo")
except Exception:
    sys.exit(1)
ok = st["NumLiveDataNodes"] >= want and st["CapacityRemaining"] > 0 and info.get("Safemode", "") == ""
sys.exit(0 if ok else 1)
EOF
}

main() {
  local t0=$SECONDS
  install_java
  install_jars
  write_conf
  if [ -s "$HDFS_HOME/run/namenode.pid" ] && kill -0 "$(cat "$HDFS_HOME/run/namenode.pid")" 2>/dev/null; then
    log "HDFS already running (namenode pid $(cat "$HDFS_HOME/run/namenode.pid")); run stop-hdfs.sh first"; exit 1
  fi
  local p w
  for p in "$NN_PORT" "$NN_HTTP_PORT"; do
    # a previous instance may still be shutting down: give it up to 20 s
    for ((w = 0; w < 40; w++)); do port_busy "$p" || break; sleep 0.5; done
    if port_busy "$p"; then log "port 127.0.0.1:$p is already in use"; exit 1; fi
  done
  local t1=$SECONDS
  if [ "${HDFS_KEEP_DATA:-0}" != 1 ] || [ ! -d "$HDFS_HOME/data/name/current" ]; then
    rm -rf "$HDFS_HOME/data"
    mkdir -p "$HDFS_HOME/data"
    java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$(cat "$HDFS_HOME/classpath")" \
        org.apache.hadoop.hdfs.server.namenode.NameNode -format -nonInteractive -force \
        > "$HDFS_HOME/logs/format.log" 2>&1 || { tail -30 "$HDFS_HOME/logs/format.log" >&2; exit 1; }
  fi
  jvm namenode org.apache.hadoop.hdfs.server.namenode.NameNode
  local i
  for ((i = 0; i < NUM_DN; i++)); do
    jvm "datanode$i" org.apache.hadoop.hdfs.server.datanode.DataNode \
        -D "dfs.datanode.data.dir=file://$HDFS_HOME/data/dn$i"
  done
  local deadline=$((SECONDS + READY_TIMEOUT))
  until jmx_ready; do
    for f in "$HDFS_HOME"/run/*.pid; do
      if ! kill -0 "$(cat "$f")" 2>/dev/null; then
        local n; n=$(basename "$f" .pid)
        log "$n exited during start-up; last log lines:"; tail -40 "$HDFS_HOME/logs/$n.log" >&2; exit 1
      fi
    done
    if [ $SECONDS -ge $deadline ]; then
      log "not ready after ${READY_TIMEOUT}s"; tail -20 "$HDFS_HOME"/logs/*.log >&2; exit 1
    fi
    sleep 0.5
  done
  log "HDFS ready at hdfs://127.0.0.1:$NN_PORT ($NUM_DN datanode(s)); start-up $((SECONDS - t1)) s, total $((SECONDS - t0)) s"
  echo "export HADOOP_CONF_DIR=$HDFS_HOME/conf"
  echo "export HDFS_URL=hdfs://127.0.0.1:$NN_PORT"
}

main "$@"
