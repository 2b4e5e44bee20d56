#!/usr/bin/env bash
# Runs a single-node Apache Kafka 4.x broker (KRaft, broker+controller) on
# 127.0.0.1 from Apache Kafka's jars on Maven Central, for the tests.
#
#   scripts/kafka.sh fetch    download the jars (mvn, scripts/kafka/pom.xml)
#   scripts/kafka.sh start    fetch if needed, format, start, wait until ready;
#                             prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port>
#   scripts/kafka.sh stop     stop the broker started by `start`
#   scripts/kafka.sh tool CLASS ARGS...   run a Kafka tool class (console
#                             producer/consumer, TopicCommand) on the classpath
#
# State lives in target/kafka (override with KAFKA_TOWER_BROKER_DIR).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIBS="$ROOT/target/kafka-libs"
DIR="${KAFKA_TOWER_BROKER_DIR:-$ROOT/target/kafka}"
JAVA="${JAVA:-java}"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

fetch() {
  if [ -f "$LIBS/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { echo "kafka.sh: mvn (Maven) is required to fetch the Kafka jars" >&2; exit 1; }
  echo "kafka.sh: fetching Apache Kafka jars with Maven into $LIBS" >&2
  rm -rf "$LIBS"
  mvn -B -q -f "$ROOT/scripts/kafka/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DoutputDirectory="$LIBS" -DincludeScope=runtime >&2
  touch "$LIBS/.complete"
}

log4j_config() {
  # Broker logs go to a file; tool logs go to stderr so they never mix with
  # consumed records on stdout.
  mkdir -p "$DIR"
  cat > "$DIR/log4j2-broker.properties" <<PROPS
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $DIR/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
PROPS
  cat > "$DIR/log4j2-tools.properties" <<PROPS
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
PROPS
}

start() {
  fetch
  if [ -f "$DIR/broker.pid" ] && kill -0 "$(cat "$DIR/broker.pid")" 2>/dev/null; then
    echo "KAFKA_BOOTSTRAP_SERVERS=$(cat "$DIR/bootstrap")"
    return 0
  fi
  rm -rf "$DIR/data" "$DIR/tmp"
  mkdir -p "$DIR/data" "$DIR/tmp"
  log4j_config
  local port cport
  port="$(free_port)"
  cport="$(free_port)"
  while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
  cat > "$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.io.threads=2
num.network.threads=2
log.cleaner.dedupe.buffer.size=33554432
message.max.bytes=2097152
PROPS
  local cp="$LIBS/*"
  local jvm=(-Xms512m -Xmx512m -Djava.io.tmpdir="$DIR/tmp" -Dlog4j2.configurationFile="$DIR/log4j2-broker.properties")
  local cluster_id
  cluster_id="$("$JAVA" "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool random-uuid 2>>"$DIR/format.log" | tail -1)"
  "$JAVA" "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" -c "$DIR/server.properties" >>"$DIR/format.log" 2>&1 \
    || { echo "kafka.sh: storage format failed; see $DIR/format.log" >&2; cat "$DIR/format.log" >&2; exit 1; }
  nohup "$JAVA" "${jvm[@]}" -cp "$cp" kafka.Kafka "$DIR/server.properties" >"$DIR/stdout.log" 2>&1 &
  echo $! > "$DIR/broker.pid"
  echo "127.0.0.1:$port" > "$DIR/bootstrap"
  # The client port opens only once the broker is registered and unfenced.
  local deadline=$((SECONDS + 120))
  until python3 -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null; do
    if ! kill -0 "$(cat "$DIR/broker.pid")" 2>/dev/null; then
      echo "kafka.sh: the broker exited during startup:" >&2; tail -50 "$DIR/stdout.log" "$DIR/broker.log" >&2 || true; exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "kafka.sh: the broker did not open port $port within 120 s" >&2; tail -50 "$DIR/broker.log" >&2 || true; stop; exit 1
    fi
    sleep 0.5
  done
  # Serving metadata: list topics through the admin API.
  until tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" --list >/dev/null 2>>"$DIR/tools.log"; do
    if [ $SECONDS -ge $deadline ]; then echo "kafka.sh: the broker does not serve metadata" >&2; stop; exit 1; fi
    sleep 0.5
  done
  echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$port"
}

stop() {
  [ -f "$DIR/broker.pid" ] || return 0
  local pid
  pid="$(cat "$DIR/broker.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/broker.pid"
}

tool() {
  fetch
  local class="$1"; shift
  [ -f "$DIR/log4j2-tools.properties" ] || log4j_config
  "$JAVA" -Xms128m -Xmx256m -Djava.io.tmpdir="${TMPDIR:-/tmp}" \
    -Dlog4j2.configurationFile="$DIR/log4j2-tools.properties" -cp "$LIBS/*" "$class" "$@"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  tool) shift; tool "$@" ;;
  *) echo "usage: $0 fetch|start|stop|tool CLASS ARGS..." >&2; exit 2 ;;
esac
