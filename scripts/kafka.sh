#!/usr/bin/env bash
# Runs a single-node Apache Kafka 4.x broker (KRaft, broker+controller) on
# 127.0.0.1 from Apache Kafka's jars on Maven Central, for the tests.
#
#   scripts/kafka.sh fetch    download the jars (mvn, scripts/kafka/pom.xml)
#   scripts/kafka.sh start    fetch if needed, format, start, wait until ready;
#                             prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port>
#                             (PLAINTEXT) and the secured listeners of the
#                             same broker:
#                               KAFKA_SASL_SSL_BOOTSTRAP_SERVERS  SASL_SSL,
#                                 SCRAM-SHA-512 (KAFKA_SCRAM_USER and
#                                 KAFKA_SCRAM_PASSWORD, created at format)
#                                 and OAUTHBEARER (Kafka's unsecured
#                                 validator: unsigned JWTs with sub and exp)
#                               KAFKA_SSL_BOOTSTRAP_SERVERS  SSL with client
#                                 certificates required (mTLS)
#                               KAFKA_LOG_DIR  the broker's log.dirs
#                               KAFKA_TLS_DIR  the certificates, made at
#                                 start: ca.pem (the broker's CA),
#                                 client.pem/.key (signed by it),
#                                 expired-client.pem/.key (signed by it,
#                                 valid 2020-01-01 to 2020-01-02 only),
#                                 other-ca.pem (a CA that signed nothing)
#   scripts/kafka.sh stop     stop the broker started by `start`
#   scripts/kafka.sh kill     SIGKILL it (a crash): data and ports are kept
#   scripts/kafka.sh restart  start it again on the same data and ports,
#                             wait until ready, print the same addresses
#   scripts/kafka.sh reap SECONDS   stop the broker once none of the
#                             processes listed in $DIR/users has been alive
#                             for SECONDS (the test kit's own broker)
#   scripts/kafka.sh tool CLASS ARGS...   run a Kafka tool class (console
#                             producer/consumer, TopicCommand) on the classpath
#
# State lives in target/kafka (override with KAFKA_TOWER_BROKER_DIR).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIBS="$ROOT/target/kafka-libs"
DIR="${KAFKA_TOWER_BROKER_DIR:-$ROOT/target/kafka}"
JAVA="${JAVA:-java}"

SCRAM_USER=kafka-tower-test
SCRAM_PASSWORD=kafka-tower-test-secret
KEYSTORE_PASSWORD=kafka-tower-test-keystore

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

# A private CA, the broker's certificate (for 127.0.0.1 and localhost) and
# client certificates, all P-256 so that generating them takes milliseconds.
make_certificates() {
  local tls="$DIR/tls"
  command -v openssl >/dev/null || { echo "kafka.sh: openssl is required to make the test certificates" >&2; exit 1; }
  rm -rf "$tls"
  mkdir -p "$tls/ca-db"
  # `set -e` holds inside the subshell only when its status is not tested,
  # so a failure is reported by the ERR trap (and then ends the script).
  trap 'echo "kafka.sh: making the test certificates failed; see $tls/openssl.log" >&2' ERR
  (
    cd "$tls"
    exec 2>>openssl.log
    key() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"; }
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
      -days 30 -subj "/CN=kafka-tower test CA"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout other-ca.key -out other-ca.pem \
      -days 30 -subj "/CN=kafka-tower unrelated CA"
    key broker localhost
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile broker.ext -out broker.pem
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
      -passout "pass:$KEYSTORE_PASSWORD" -out broker.p12
    key client kafka-tower-client
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -out client.pem
    # `openssl x509` cannot back-date; `openssl ca` can.
    key expired-client kafka-tower-expired-client
    touch ca-db/index.txt
    echo 1000 > ca-db/serial
    cat > ca.cnf <<CNF
[ca]
default_ca = test
[test]
dir = .
database = ca-db/index.txt
new_certs_dir = ca-db
serial = ca-db/serial
default_md = sha256
policy = any
[any]
commonName = supplied
CNF
    openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in expired-client.csr -out expired-client.pem \
      -startdate 20200101000000Z -enddate 20200102000000Z -notext
    rm -f ./*.csr
  )
  trap - ERR
}

start() {
  fetch
  if [ -f "$DIR/broker.pid" ] && kill -0 "$(cat "$DIR/broker.pid")" 2>/dev/null; then
    if [ -f "$DIR/addresses" ]; then
      cat "$DIR/addresses"
      return 0
    fi
    # Started by an older version of this script, without the secured
    # listeners: start afresh.
    stop
  fi
  rm -rf "$DIR/data" "$DIR/tmp"
  mkdir -p "$DIR/data" "$DIR/tmp"
  log4j_config
  make_certificates
  local port cport sport tport
  port="$(free_port)"
  cport="$(free_port)"
  while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
  sport="$(free_port)"
  while [ "$sport" = "$port" ] || [ "$sport" = "$cport" ]; do sport="$(free_port)"; done
  tport="$(free_port)"
  while [ "$tport" = "$port" ] || [ "$tport" = "$cport" ] || [ "$tport" = "$sport" ]; do tport="$(free_port)"; done
  cat > "$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SASL_SSL://127.0.0.1:$sport,SSL://127.0.0.1:$tport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sport,SSL://127.0.0.1:$tport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,OAUTHBEARER
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,OAUTHBEARER
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.ssl.ssl.client.auth=required
ssl.keystore.type=PKCS12
ssl.keystore.location=$DIR/tls/broker.p12
ssl.keystore.password=$KEYSTORE_PASSWORD
ssl.key.password=$KEYSTORE_PASSWORD
ssl.truststore.type=PEM
ssl.truststore.location=$DIR/tls/ca.pem
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
# A broker restarted after SIGKILL registers once its old session expires:
# 2 s rather than 9 s, so that the broker-fault tests restart quickly.
broker.session.timeout.ms=2000
broker.heartbeat.interval.ms=500
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=500
auto.create.topics.enable=false
num.io.threads=2
num.network.threads=2
log.cleaner.dedupe.buffer.size=33554432
message.max.bytes=2097152
PROPS
  local cp="$LIBS/*"
  local jvm=(-Xms512m -Xmx512m -Djava.io.tmpdir="$DIR/tmp" -Dlog4j2.configurationFile="$DIR/log4j2-broker.properties")
  rm -f "$DIR/stdout.log"
  local cluster_id
  cluster_id="$("$JAVA" "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool random-uuid 2>>"$DIR/format.log" | tail -1)"
  "$JAVA" "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" -c "$DIR/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]" >>"$DIR/format.log" 2>&1 \
    || { echo "kafka.sh: storage format failed; see $DIR/format.log" >&2; cat "$DIR/format.log" >&2; exit 1; }
  launch
  cat > "$DIR/addresses" <<ADDR
KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$port
KAFKA_SASL_SSL_BOOTSTRAP_SERVERS=127.0.0.1:$sport
KAFKA_SSL_BOOTSTRAP_SERVERS=127.0.0.1:$tport
KAFKA_SCRAM_USER=$SCRAM_USER
KAFKA_SCRAM_PASSWORD=$SCRAM_PASSWORD
KAFKA_TLS_DIR=$DIR/tls
KAFKA_LOG_DIR=$DIR/data
ADDR
  wait_ready "$port"
  cat "$DIR/addresses"
}

# Starts the JVM of the broker formatted in $DIR, in the background.
launch() {
  local jvm=(-Xms512m -Xmx512m -Djava.io.tmpdir="$DIR/tmp" -Dlog4j2.configurationFile="$DIR/log4j2-broker.properties")
  nohup "$JAVA" "${jvm[@]}" -cp "$LIBS/*" kafka.Kafka "$DIR/server.properties" >>"$DIR/stdout.log" 2>&1 &
  echo $! > "$DIR/broker.pid"
}

# Waits until the broker on client port $1 serves metadata.
wait_ready() {
  local port="$1"
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
}

# SIGKILL: the broker dies as in a crash, its data and ports stay for `restart`.
kill_broker() {
  [ -f "$DIR/broker.pid" ] || { echo "kafka.sh: no broker to kill in $DIR" >&2; exit 1; }
  local pid
  pid="$(cat "$DIR/broker.pid")"
  kill -KILL "$pid" 2>/dev/null || true
  # Gone, or a zombie no one reaps (a container without an init): either
  # way it no longer listens.
  local waited=0
  while kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ]; do
    waited=$((waited + 1))
    if [ "$waited" -ge 300 ]; then echo "kafka.sh: broker $pid still alive 30 s after SIGKILL" >&2; exit 1; fi
    sleep 0.1
  done
  rm -f "$DIR/broker.pid"
}

# Starts the broker killed or stopped before, on the same data and ports.
restart() {
  [ -f "$DIR/addresses" ] && [ -f "$DIR/server.properties" ] \
    || { echo "kafka.sh: nothing to restart in $DIR (run start first)" >&2; exit 1; }
  if ! { [ -f "$DIR/broker.pid" ] && kill -0 "$(cat "$DIR/broker.pid")" 2>/dev/null; }; then
    launch
  fi
  wait_ready "$(sed -n 's/^KAFKA_BOOTSTRAP_SERVERS=127.0.0.1://p' "$DIR/addresses")"
  cat "$DIR/addresses"
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

# Whether a process listed in $DIR/users is alive.
# users_alive and reap (the test kit's own service).
PID_FILE=broker.pid
# shellcheck source=scripts/reap.sh
. "$ROOT/scripts/reap.sh"

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
  kill) kill_broker ;;
  restart) restart ;;
  reap) shift; reap "$@" ;;
  tool) shift; tool "$@" ;;
  *) echo "usage: $0 fetch|start|stop|kill|restart|reap SECONDS|tool CLASS ARGS..." >&2; exit 2 ;;
esac
