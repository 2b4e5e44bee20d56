#!/usr/bin/env bash
# Runs a Confluent-compatible Schema Registry on 127.0.0.1 for the tests:
# Apicurio Registry 3.3.3 (its "app" distribution from Maven Central, a
# Quarkus fast-jar), with in-memory storage (H2), global compatibility rule
# BACKWARD, canonical hashing on the Confluent-compatible API, and deletion
# of subjects and versions allowed (as in Confluent's registry).
#
#   scripts/registry.sh fetch    download and unpack it (mvn) into
#                                target/registry-app
#   scripts/registry.sh start    fetch if needed, start, wait until ready;
#                                prints SCHEMA_REGISTRY_URL=http://127.0.0.1:
#                                <port>/apis/ccompat/v7 (the same URL again
#                                if it is already running)
#   scripts/registry.sh stop     stop the registry started by `start`
#   scripts/registry.sh restart  stop it if running, start it again on the
#                                same ports, wait until ready, print the same
#                                URL. Storage is in memory: every schema
#                                registered before is gone (and ids start
#                                again from 1). For an outage test: `stop`,
#                                test, then `restart`.
#   scripts/registry.sh status   print the URL and exit 0 when running,
#                                exit 1 otherwise
#   scripts/registry.sh reap SECONDS   stop the registry once none of the
#                                processes listed in $DIR/users has been
#                                alive for SECONDS (the test kit's own
#                                registry)
#
# Java 21 or later is required: $REGISTRY_JAVA if set, else `java` on PATH
# if it is new enough, else the newest /usr/lib/jvm/*/bin/java.
# Both the API port and the management port (health, metrics) listen on
# 127.0.0.1 only.
# State lives in target/registry (override with KAFKA_TOWER_REGISTRY_DIR);
# the log is $DIR/registry.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=3.3.3
ARTIFACT="io.apicurio:apicurio-registry-app:$VERSION:tar.gz:all"
APP="$ROOT/target/registry-app"
DIR="${KAFKA_TOWER_REGISTRY_DIR:-$ROOT/target/registry}"
READY_TIMEOUT=90

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

fetch() {
  if [ -f "$APP/.complete" ]; then return 0; fi
  # One fetch at a time: the test kit's registry and scripts/test's share
  # $APP.
  mkdir -p "$(dirname "$APP")"
  exec 8>"$APP.lock"
  flock 8
  if [ -f "$APP/.complete" ]; then flock -u 8; return 0; fi
  command -v mvn >/dev/null || { echo "registry.sh: mvn (Maven) is required to fetch Apicurio Registry" >&2; exit 1; }
  echo "registry.sh: fetching Apicurio Registry $VERSION with Maven into $APP" >&2
  rm -rf "$APP" "$APP.download"
  mkdir -p "$APP" "$APP.download"
  # dependency:copy then tar rather than dependency:unpack: outside a project
  # unpack keeps its "already unpacked" markers in a literal
  # ./${project.basedir}/target of the working directory, and skips the
  # unpacking next time.
  mvn -B -q -Dstyle.color=never org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
    -Dartifact="$ARTIFACT" -DoutputDirectory="$APP.download" >&2
  tar -xzf "$APP.download"/*.tar.gz -C "$APP"
  rm -rf "$APP.download"
  [ -f "$APP/quarkus-run.jar" ] \
    || { echo "registry.sh: $ARTIFACT has no quarkus-run.jar (see $APP)" >&2; exit 1; }
  touch "$APP/.complete"
  flock -u 8
}

# The major version of the Java runtime $1 ("1.8.0_402" -> 8, "21.0.2" -> 21,
# "25-ea" -> 25), or nothing when it does not run.
java_major() {
  local v
  v="$("$1" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -1)" || return 0
  case "$v" in
    1.*) v="${v#1.}" ;;
  esac
  v="${v%%[!0-9]*}"
  echo "$v"
}

# Prints a Java 21+ runtime, or fails.
find_java() {
  local candidate major best="" best_major=0
  if [ -n "${REGISTRY_JAVA:-}" ]; then
    major="$(java_major "$REGISTRY_JAVA" 2>/dev/null || true)"
    if [ -n "$major" ] && [ "$major" -ge 21 ]; then echo "$REGISTRY_JAVA"; return 0; fi
    echo "registry.sh: REGISTRY_JAVA=$REGISTRY_JAVA is not a Java 21+ runtime (version: ${major:-unknown})" >&2
    exit 1
  fi
  if command -v java >/dev/null; then
    major="$(java_major java 2>/dev/null || true)"
    if [ -n "$major" ] && [ "$major" -ge 21 ]; then command -v java; return 0; fi
  fi
  for candidate in /usr/lib/jvm/*/bin/java; do
    [ -x "$candidate" ] || continue
    major="$(java_major "$candidate" 2>/dev/null || true)"
    if [ -n "$major" ] && [ "$major" -ge 21 ] && [ "$major" -gt "$best_major" ]; then
      best="$candidate"; best_major="$major"
    fi
  done
  if [ -n "$best" ]; then echo "$best"; return 0; fi
  major="$(java_major java 2>/dev/null || true)"
  echo "registry.sh: Apicurio Registry $VERSION needs Java 21 or later; none found" \
    "(java on PATH: ${major:-none}; none in /usr/lib/jvm)." \
    "Install one (e.g. apt-get install openjdk-21-jre-headless) or set REGISTRY_JAVA." >&2
  exit 1
}

# Whether process $1 is alive: a zombie no one reaps (SIGKILLed in a
# container without an init) is not.
alive() {
  kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]
}

# Whether the pid file names a live registry — this one, not another
# process that has the pid since.
running() {
  [ -f "$DIR/registry.pid" ] || return 1
  local pid
  pid="$(cat "$DIR/registry.pid")"
  alive "$pid" && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'quarkus-run.jar'
}

url() {
  echo "SCHEMA_REGISTRY_URL=http://127.0.0.1:$(sed -n 's/^port=//p' "$DIR/ports")/apis/ccompat/v7"
}

start() {
  fetch
  if running && [ -f "$DIR/ports" ]; then
    url
    return 0
  fi
  # A stale pid file (the registry died or was killed), or a process without
  # its ports file: start afresh.
  stop
  mkdir -p "$DIR"
  local port mport
  port="$(free_port)"
  mport="$(free_port)"
  while [ "$mport" = "$port" ]; do mport="$(free_port)"; done
  printf 'port=%s\nmanagement_port=%s\n' "$port" "$mport" > "$DIR/ports"
  launch
  wait_ready
  url
}

# Starts the registry in the background on the ports in $DIR/ports.
launch() {
  local java port mport
  java="$(find_java)"
  port="$(sed -n 's/^port=//p' "$DIR/ports")"
  mport="$(sed -n 's/^management_port=//p' "$DIR/ports")"
  rm -rf "$DIR/tmp"
  mkdir -p "$DIR/tmp"
  local jvm=(
    -Xms64m -Xmx512m
    -Djava.io.tmpdir="$DIR/tmp"
    -Dquarkus.http.host=127.0.0.1
    -Dquarkus.http.port="$port"
    -Dquarkus.management.host=127.0.0.1
    -Dquarkus.management.port="$mport"
    # Property apicurio.rules.global.<rule type>: the rule applies to every
    # subject that has no rule of its own (Confluent's default is BACKWARD,
    # Apicurio's none).
    -Dapicurio.rules.global.compatibility=BACKWARD
    # Schemas that differ only in formatting get the same id, as in
    # Confluent's registry.
    -Dapicurio.ccompat.use-canonical-hash=true
    # DELETE /subjects/... works as in Confluent's registry (Apicurio refuses
    # it by default).
    -Dapicurio.rest.deletion.artifact.enabled=true
    -Dapicurio.rest.deletion.artifact-version.enabled=true
    -Dapicurio.storage.snapshot.location="$DIR/tmp"
    -Dapicurio.import.work-dir="$DIR/tmp"
  )
  echo "=== $(date -u +%FT%TZ) starting with $java ($(java_major "$java")) on 127.0.0.1:$port, management 127.0.0.1:$mport" >> "$DIR/registry.log"
  (cd "$DIR" && exec nohup "$java" "${jvm[@]}" -jar "$APP/quarkus-run.jar" >>"$DIR/registry.log" 2>&1 </dev/null) &
  echo $! > "$DIR/registry.pid"
}

# Waits until the Confluent-compatible API answers.
wait_ready() {
  local port deadline
  port="$(sed -n 's/^port=//p' "$DIR/ports")"
  deadline=$((SECONDS + READY_TIMEOUT))
  until python3 - "http://127.0.0.1:$port/apis/ccompat/v7/subjects" 2>/dev/null <<'PY'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
  do
    if ! running; then
      echo "registry.sh: the registry exited during startup:" >&2
      tail -50 "$DIR/registry.log" >&2 || true
      rm -f "$DIR/registry.pid"
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "registry.sh: the registry did not answer on port $port within $READY_TIMEOUT s:" >&2
      tail -50 "$DIR/registry.log" >&2 || true
      stop
      exit 1
    fi
    sleep 0.5
  done
}

restart() {
  [ -f "$DIR/ports" ] || { echo "registry.sh: nothing to restart in $DIR (run start first)" >&2; exit 1; }
  fetch
  stop
  launch
  wait_ready
  url
}

stop() {
  [ -f "$DIR/registry.pid" ] || return 0
  local pid
  pid="$(cat "$DIR/registry.pid")"
  if running; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do alive "$pid" || break; sleep 0.5; done
    if alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    fi
  fi
  rm -f "$DIR/registry.pid"
}

status() {
  if running && [ -f "$DIR/ports" ]; then
    url
    echo "registry.sh: running, pid $(cat "$DIR/registry.pid"), log $DIR/registry.log" >&2
  else
    echo "registry.sh: not running" >&2
    return 1
  fi
}

# users_alive and reap (the test kit's own service).
PID_FILE=registry.pid
# shellcheck source=scripts/reap.sh
. "$ROOT/scripts/reap.sh"

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  status) status ;;
  reap) shift; reap "$@" ;;
  *) echo "usage: $0 fetch|start|stop|restart|status|reap SECONDS" >&2; exit 2 ;;
esac
