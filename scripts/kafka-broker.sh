#!/usr/bin/env bash
# Fetches, starts and stops a single-node Apache Kafka broker (KRaft, combined broker and
# controller) on free loopback ports, for tests and local runs. Nothing here needs Docker: the
# broker jars come from Maven Central through Maven and run on Java 17.
#
#   scripts/kafka-broker.sh fetch              download the jars into the cache (idempotent)
#   scripts/kafka-broker.sh start [DIR]        format DIR (default: a new temp dir) and start;
#                                              prints the bootstrap address (host:port)
#   scripts/kafka-broker.sh stop DIR           stop the broker started in DIR (keeps DIR)
#   scripts/kafka-broker.sh prepare DIR        only write DIR/server.properties and format
#                                              DIR/data (the C++ test harness runs java itself)
#   scripts/kafka-broker.sh classpath          print the jar folder (after fetch)
#
# Environment:
#   EVENTBUS_KAFKA_VERSION  broker version (default 4.1.1)
#   EVENTBUS_KAFKA_HOME     jar cache (default $HOME/.cache/eventbus/kafka-<version>)
#   KAFKA_PORT, KAFKA_CONTROLLER_PORT  fixed ports instead of free ones
#   KAFKA_START_TIMEOUT     seconds to wait for the broker to accept connections (default 60)
set -euo pipefail

VERSION="${EVENTBUS_KAFKA_VERSION:-4.1.1}"
KAFKA_HOME="${EVENTBUS_KAFKA_HOME:-${HOME}/.cache/eventbus/kafka-${VERSION}}"
LIBS="${KAFKA_HOME}/libs"

die() { echo "kafka-broker: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

cmd_fetch() {
  # The marker is written last, so an interrupted fetch is redone rather than trusted.
  if [[ -f "${KAFKA_HOME}/.complete" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (install maven)"
  mkdir -p "${KAFKA_HOME}"
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "${work}"' RETURN
  cat > "${work}/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>eventbus</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>${VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
POM
  rm -rf "${LIBS}.tmp"
  if ! mvn -q -B -Dstyle.color=never -f "${work}/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="${LIBS}.tmp" > "${work}/mvn.log" 2>&1; then
    cat "${work}/mvn.log" >&2
    die "mvn could not fetch org.apache.kafka:kafka_2.13:${VERSION}"
  fi
  rm -rf "${LIBS}"
  mv "${LIBS}.tmp" "${LIBS}"
  touch "${KAFKA_HOME}/.complete"
}

# Writes DIR/server.properties and formats DIR/data once (a restart keeps the log dir).
cmd_prepare() {
  local dir="$1"
  [[ -f "${KAFKA_HOME}/.complete" ]] || cmd_fetch
  command -v java >/dev/null || die "java not found (install a JDK/JRE 17)"
  mkdir -p "${dir}/data"
  local port cport
  if [[ -f "${dir}/ports" && -z "${KAFKA_PORT:-}" ]]; then
    # A restart keeps its address, so clients reconnect to the same bootstrap server.
    read -r port cport < "${dir}/ports"
  else
    port="${KAFKA_PORT:-$(free_port)}"
    cport="${KAFKA_CONTROLLER_PORT:-$(free_port)}"
  fi
  while [[ "${cport}" == "${port}" ]]; do cport="$(free_port)"; done
  write_config "${dir}" "${port}" "${cport}"
  if [[ ! -f "${dir}/data/meta.properties" ]]; then
    # A fixed cluster id saves a second JVM start (random-uuid); the log dir is private anyway.
    java -cp "${LIBS}/*" kafka.tools.StorageTool format --standalone \
        --cluster-id "${KAFKA_CLUSTER_ID:-ZXZlbnRidXMta2Fma2EtMQ}" \
        --config "${dir}/server.properties" > "${dir}/format.log" 2>&1 ||
      { cat "${dir}/format.log" >&2; die "formatting ${dir}/data failed"; }
  fi
  echo "${port} ${cport}" > "${dir}/ports"
}

cmd_start() {
  local dir="${1:-}"
  if [[ -z "${dir}" ]]; then
    dir="$(mktemp -d -t eventbus-kafka.XXXXXX)"
  fi
  cmd_prepare "${dir}"
  local port cport
  read -r port cport < "${dir}/ports"
  # A small heap and the C1 compiler only: the broker starts in seconds on a busy 2-core box.
  nohup java -Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Dlog4j2.configurationFile="${dir}/log4j2.properties" \
      -cp "${LIBS}/*" kafka.Kafka "${dir}/server.properties" \
      > "${dir}/broker.log" 2>&1 < /dev/null &
  echo $! > "${dir}/broker.pid"
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-60}))
  # "Kafka Server started" is logged only after the listener is bound and the broker is
  # unfenced; a bare TCP accept comes earlier and produces spurious metadata errors in clients.
  until grep -q "Kafka Server started" "${dir}/broker.log" 2>/dev/null; do
    if ! kill -0 "$(cat "${dir}/broker.pid")" 2>/dev/null; then
      tail -n 40 "${dir}/broker.log" >&2
      die "broker exited during start-up (log: ${dir}/broker.log)"
    fi
    if ((SECONDS > deadline)); then
      tail -n 40 "${dir}/broker.log" >&2
      die "broker did not start within ${KAFKA_START_TIMEOUT:-60}s (log: ${dir}/broker.log)"
    fi
    sleep 0.2
  done
  echo "127.0.0.1:${port}" > "${dir}/bootstrap"
  echo "127.0.0.1:${port}"
  echo "kafka-broker: started in ${dir} (stop with: $0 stop ${dir})" >&2
}

write_config() {
  local dir="$1" port="$2" cport="$3"
  cat > "${dir}/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:${cport}
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}
advertised.listeners=PLAINTEXT://127.0.0.1:${port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=${dir}/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# A 1 MiB event plus its headers and the record batch overhead must fit.
message.max.bytes=4194304
replica.fetch.max.bytes=4194304
socket.request.max.bytes=104857600
auto.create.topics.enable=true
log.flush.interval.messages=9223372036854775807
num.network.threads=2
num.io.threads=4
background.threads=2
log.cleaner.enable=false
PROPS
  cat > "${dir}/log4j2.properties" <<'LOG'
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=INFO
logger.org.name=org.apache.kafka
logger.org.level=WARN
LOG
}

cmd_stop() {
  local dir="${1:-}"
  [[ -n "${dir}" ]] || die "usage: $0 stop DIR"
  [[ -f "${dir}/broker.pid" ]] || return 0
  local pid
  pid="$(cat "${dir}/broker.pid")"
  if kill -0 "${pid}" 2>/dev/null; then
    kill -TERM "${pid}"
    for _ in $(seq 1 150); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.2
    done
    kill -0 "${pid}" 2>/dev/null && kill -KILL "${pid}"
  fi
  rm -f "${dir}/broker.pid"
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  prepare) shift; [[ $# -eq 1 ]] || die "usage: $0 prepare DIR"; cmd_prepare "$1" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  classpath) echo "${LIBS}" ;;
  *) echo "usage: $0 fetch|start [DIR]|stop DIR|prepare DIR|classpath" >&2; exit 2 ;;
esac
