#!/usr/bin/env bash
# Manage a private, throwaway Apache Kafka broker (single node, KRaft mode,
# combined broker+controller) bound to 127.0.0.1 on free ports.
#
#   scripts/kafka.sh start     STATE_DIR   start (or reuse) it; print its bootstrap address
#   scripts/kafka.sh stop      STATE_DIR   stop it (no error if it isn't running)
#   scripts/kafka.sh bootstrap STATE_DIR   print its bootstrap address if running (else exit 1)
#   scripts/kafka.sh password  STATE_DIR   print the password of its user `lambent` (else exit 1)
#
# The broker's jars come from Maven Central (scripts/kafka-pom.xml, resolved
# with mvn into ${LAMBENT_CACHE:-~/.cache/lambent}/kafka-VERSION/libs on the
# first run; later runs don't call mvn). STATE_DIR holds server.properties,
# log4j2.xml, data/ (the formatted KRaft log dir; kept across stop/start),
# kafka.pid, kafka.bootstrap ("127.0.0.1:PORT") and kafka.log. Topics and
# committed offsets survive stop/start in the same STATE_DIR (the ports
# change); for an empty broker, stop it and remove STATE_DIR. Progress
# messages go to stderr; stdout only gets the bootstrap address.
#
# Both listeners require SASL (SASL_PLAINTEXT, mechanism PLAIN) as the user
# `lambent`: functions share the host's network, and a client without the
# password gets no further than ApiVersions and the SASL handshake, on the
# client port and on the controller port alike. The password is generated on
# the first start (32 random bytes, hex) into kafka.password (mode 0600) and
# reused after; it reaches the broker in server.properties (mode 0600, the
# listeners' JAAS config), never a command line. Clients use
# security_protocol=SASL_PLAINTEXT, sasl_mechanism=PLAIN,
# sasl_plain_username=lambent and the password (`password STATE_DIR`).
#
# Needs Java 17+ and, on the first run only, Maven (both apt-installed if
# missing and we are root) and python3 (to pick free ports and to check
# that the broker takes our password).
#
# Environment:
#   LAMBENT_CACHE            cache root (default ~/.cache/lambent)
#   LAMBENT_KAFKA_VERSION    Kafka release from Maven Central (default 4.1.2;
#                            4.x only: 3.x logs through log4j 1, not log4j2.xml)
#   LAMBENT_KAFKA_JVM_OPTS   JVM flags for the broker (default: small heap, SerialGC)
#   LAMBENT_PYTHON           a python with kafka-python, used for the readiness
#                            probe instead of Kafka's Java TopicCommand (faster)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_VERSION="${LAMBENT_KAFKA_VERSION:-4.1.2}"
CACHE_ROOT="${LAMBENT_CACHE:-$HOME/.cache/lambent}"
KAFKA_HOME="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
POM="$LAMBENT_ROOT/scripts/kafka-pom.xml"

START_TIMEOUT=60   # seconds from launching the JVM until it must answer a metadata request
STOP_TIMEOUT=20    # seconds to wait after SIGTERM before SIGKILL
PORT_ATTEMPTS=3    # retries if a chosen port gets taken before Kafka binds it
SASL_USER=lambent  # the one user both listeners know (SASL PLAIN)

# Light on a 2-core box: small heap, serial GC, C1 JIT only (C2 compiles
# compete with startup for the CPUs and a test broker never gets hot enough
# to pay them back), no hsperfdata file in /tmp.
DEFAULT_JVM_OPTS="-Xms256m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError -XX:-UsePerfData -Djava.awt.headless=true"
# The short-lived tool JVMs (kafka-storage format, TopicCommand).
TOOL_JVM_OPTS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData -Djava.awt.headless=true)

usage() {
    echo "usage: ${0##*/} {start|stop|bootstrap|password} STATE_DIR" >&2
    exit 2
}

# ---------------------------------------------------------------- jars

# ensure_kafka_libs: the broker's jars in LIBS (scripts/lib.sh resolve_maven_libs).
ensure_kafka_libs() {
    resolve_maven_libs "$KAFKA_HOME" "$POM" kafka.version "$KAFKA_VERSION" kafka_2.13 "Apache Kafka $KAFKA_VERSION"
}

# ---------------------------------------------------------------- process

# pid_from_file: print the PID recorded in the pidfile, if it is a number.
pid_from_file() {
    pid_in_file "$PIDFILE"
}

# is_kafka_pid PID: /proc says PID is a live java running kafka.Kafka with
# this STATE_DIR's server.properties, so a recycled PID (or another state
# dir's broker) never gets signalled. Without /proc we never claim a PID.
is_kafka_pid() {
    local pid="$1" comm args
    pid_alive "$pid" || return 1
    [[ -r "/proc/$pid/comm" && -r "/proc/$pid/cmdline" ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ "$comm" == java ]] || return 1
    args="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    grep -Fxq kafka.Kafka <<<"$args" && grep -Fxq "$CONFIG" <<<"$args"
}

# port_from_bootstrap: extract the port from the bootstrap file.
port_from_bootstrap() {
    local addr port
    [[ -f "$BOOTFILE" ]] || return 1
    addr="$(tr -d '[:space:]' <"$BOOTFILE")"
    port="${addr#127.0.0.1:}"
    [[ "$port" =~ ^[0-9]+$ ]] || return 1
    printf '%s\n' "$port"
}

# kafka_answers PORT: the port speaks Kafka: send an ApiVersions v0 request
# (correlation id 0x4c414d42, client id "lambent") and check that the reply
# carries our correlation id. Pure bash, no JVM; any broker version answers
# ApiVersions, even with an error code.
kafka_answers() {
    local reply
    # shellcheck disable=SC2016  # $1 is the inner bash's argument
    reply="$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "\x00\x00\x00\x11\x00\x12\x00\x00\x4c\x41\x4d\x42\x00\x07lambent" >&3
        head -c 8 <&3 | od -An -tx1' _ "$1" 2>/dev/null | tr -d ' \n')" || return 1
    [[ "${reply:8:8}" == 4c414d42 ]]
}

# sasl_login PORT: the listener on 127.0.0.1:PORT demands SASL and lets
# SASL_USER in with the password in PASSFILE (SaslHandshake v1 PLAIN, then
# SaslAuthenticate v0; the password is read from the file, never passed on a
# command line). Exit 0: logged in; 1: refused (another password); 2: not a
# SASL PLAIN listener (a leftover PLAINTEXT broker), or no answer.
sasl_login() {
    timeout 5 "$PYTHON" -c 'import socket, struct, sys
port, passfile, user = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(passfile) as handle:
    password = handle.read().strip()

def call(sock, api_key, version, body, correlation):
    client = b"lambent-probe"
    message = struct.pack(">hhih", api_key, version, correlation, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(message)) + message)
    def read(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data
    reply = read(struct.unpack(">i", read(4))[0])
    if struct.unpack(">i", reply[:4])[0] != correlation:
        raise EOFError
    return struct.unpack(">h", reply[4:6])[0]          # every answer here starts with its error code

try:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        if call(sock, 17, 1, struct.pack(">h", 5) + b"PLAIN", 1) != 0:
            sys.exit(2)
        token = b"\0" + user.encode() + b"\0" + password.encode()
        sys.exit(0 if call(sock, 36, 0, struct.pack(">i", len(token)) + token, 2) == 0 else 1)
except (OSError, EOFError, struct.error):
    sys.exit(2)' "$1" "$PASSFILE" "$SASL_USER" 2>/dev/null
}

# is_running: our pidfile names a live kafka java of this STATE_DIR, the
# bootstrap port answers a Kafka request, and it demands SASL and takes our
# password (so a leftover started without one, or with another, is never
# reused).
is_running() {
    local pid port
    pid="$(pid_from_file)" || return 1
    is_kafka_pid "$pid" || return 1
    port="$(port_from_bootstrap)" || return 1
    kafka_answers "$port" || return 1
    read_secret_file "$PASSFILE" >/dev/null || return 1
    sasl_login "$port"
}

# elapsed_since T0: print the seconds (one decimal) since T0, a
# microsecond timestamp taken as ${EPOCHREALTIME/./}.
elapsed_since() {
    local us=$((${EPOCHREALTIME/./} - $1))
    printf '%d.%ds\n' $((us / 1000000)) $((us / 100000 % 10))
}

log_tail() {
    if [[ -f "$LOGFILE" ]]; then
        echo "---- last lines of $LOGFILE ----" >&2
        tail -n "${1:-20}" "$LOGFILE" >&2
        echo "----" >&2
    fi
}

do_stop() {
    local pid
    if pid="$(pid_from_file)" && is_kafka_pid "$pid"; then
        stop_pid "$pid" Kafka "$STOP_TIMEOUT"
    fi
    rm -f "$PIDFILE" "$BOOTFILE"
}

# ---------------------------------------------------------------- config

# write_log4j2: Kafka 4.x logs through log4j2 (slf4j 1.7 -> log4j-slf4j-impl);
# everything goes to kafka.log, whose path comes in as a system property so
# that it needs no XML escaping.
write_log4j2() {
    cat >"$STATE_DIR/log4j2.xml" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by scripts/kafka.sh; rewritten on every start. -->
<Configuration status="warn">
  <Appenders>
    <File name="file" fileName="${sys:lambent.kafka.logfile}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="org.apache.kafka.clients" level="warn"/>
    <Logger name="state.change.logger" level="warn"/>
    <Root level="info">
      <AppenderRef ref="file"/>
    </Root>
  </Loggers>
</Configuration>
XML
    # The tool JVMs (format, TopicCommand) only report warnings, on stderr.
    cat >"$STATE_DIR/log4j2-tools.xml" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="warn">
      <AppenderRef ref="stderr"/>
    </Root>
  </Loggers>
</Configuration>
XML
}

# jaas_plain PASSWORD: a PLAIN login module config that logs in as SASL_USER
# (the broker's own connections) and knows SASL_USER's password (clients).
jaas_plain() {
    printf 'org.apache.kafka.common.security.plain.PlainLoginModule required username="%s" password="%s" user_%s="%s";' \
        "$SASL_USER" "$1" "$SASL_USER" "$1"
}

# write_server_properties PORT CPORT PASSWORD: mode 0600, since it holds the
# password (in each listener's JAAS config).
write_server_properties() {
    local port="$1" cport="$2" jaas
    jaas="$(jaas_plain "$3")"
    private_write "$CONFIG" "$(cat <<EOF
# Written by scripts/kafka.sh; rewritten (with new ports) on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=CLIENT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=CLIENT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=CLIENT
log.dirs=$DATA_DIR

# Every connection, the broker's own to its controller included, logs in with
# SASL PLAIN as $SASL_USER: a client without the password is refused on both
# ports (it may ask for ApiVersions and start a SASL handshake, nothing more).
listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
sasl.mechanism.controller.protocol=PLAIN
listener.name.client.plain.sasl.jaas.config=$jaas
listener.name.controller.plain.sasl.jaas.config=$jaas

num.partitions=1
default.replication.factor=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0

offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=4

# Few threads: this is a test broker on a small machine.
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
EOF
)"
}

# write_probe_properties PASSWORD: the client config of TopicCommand's
# readiness probe (mode 0600: it holds the password).
write_probe_properties() {
    private_write "$STATE_DIR/probe.properties" "$(printf '%s\n' \
        'request.timeout.ms=5000' 'default.api.timeout.ms=10000' \
        'security.protocol=SASL_PLAINTEXT' 'sasl.mechanism=PLAIN' \
        "sasl.jaas.config=$(jaas_plain "$1" | sed 's/ user_[^;]*;/;/')")"
}

# new_cluster_id: a random Kafka Uuid, as `kafka-storage random-uuid` prints
# it: 16 random bytes in unpadded URL-safe base64 (22 characters), never
# starting with '-' (Kafka's own generator retries those too). Done in bash
# because a JVM start for it costs ~1 s on a small machine.
new_cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ ${#id} -eq 22 && "$id" != -* && "$id" != AAAAAAAAAAAAAAAAAAAAA[AQ] ]] && break
    done
    printf '%s\n' "$id"
}

# format_storage: give data/ a cluster id once (kafka-storage format). A
# data/ without meta.properties is an interrupted format: start over.
format_storage() {
    local cluster_id
    [[ -f "$DATA_DIR/meta.properties" ]] && return 0
    rm -rf "$DATA_DIR"
    cluster_id="$(new_cluster_id)"
    log "formatting $DATA_DIR (cluster id $cluster_id)"
    # Static quorum (controller.quorum.voters), so none of Kafka 4's
    # --standalone / --initial-controllers / --no-initial-controllers flags.
    if ! java "${TOOL_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$STATE_DIR/log4j2-tools.xml" \
        -cp "$LIBS/*" kafka.tools.StorageTool format \
        --config "$CONFIG" --cluster-id "$cluster_id" >>"$LOGFILE" 2>&1; then
        log_tail 20
        rm -rf "$DATA_DIR"
        die "kafka-storage format failed"
    fi
}

# ---------------------------------------------------------------- readiness

# metadata_ok PORT SECS: a metadata request (list topics) succeeds within
# SECS. Uses LAMBENT_PYTHON's kafka-python if set (and importable), else
# Kafka's own TopicCommand (a JVM start, ~1-2 s on a small machine).
metadata_ok() {
    local port="$1" secs="$2"
    if [[ -n "${LAMBENT_PYTHON:-}" ]] && [[ -z "${_NO_PY_PROBE:-}" ]]; then
        local rc=0
        timeout "$secs" "$LAMBENT_PYTHON" -c 'import sys
try:
    from kafka import KafkaAdminClient
except ImportError:
    sys.exit(3)
with open(sys.argv[2]) as handle:
    password = handle.read().strip()
c = KafkaAdminClient(bootstrap_servers=sys.argv[1], client_id="lambent-probe",
                     request_timeout_ms=5000, security_protocol="SASL_PLAINTEXT",
                     sasl_mechanism="PLAIN", sasl_plain_username=sys.argv[3],
                     sasl_plain_password=password)
try:
    c.list_topics()
finally:
    c.close()' "127.0.0.1:$port" "$PASSFILE" "$SASL_USER" >/dev/null 2>&1 || rc=$?
        if [[ $rc -eq 3 ]]; then
            log "LAMBENT_PYTHON ($LAMBENT_PYTHON) has no kafka-python; using Kafka's TopicCommand"
            _NO_PY_PROBE=1
        else
            return "$rc"
        fi
    fi
    timeout "$secs" java "${TOOL_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$STATE_DIR/log4j2-tools.xml" \
        -cp "$LIBS/*" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "127.0.0.1:$port" \
        --command-config "$STATE_DIR/probe.properties" \
        --list >/dev/null 2>>"$LOGFILE"
}

# try_start PORT CPORT: launch the broker and wait until it answers a
# metadata request. Returns 0 on success, 1 on failure, 2 if a port was
# already in use.
try_start() {
    local port="$1" cport="$2" log_start deadline pid jvm_opts
    log_start=0
    [[ -f "$LOGFILE" ]] && log_start="$(wc -l <"$LOGFILE")"
    rm -f "$PIDFILE"
    # shellcheck disable=SC2206  # word-splitting the JVM flags is intended
    jvm_opts=(${LAMBENT_KAFKA_JVM_OPTS:-$DEFAULT_JVM_OPTS})
    # Background the JVM itself (so $! is its PID), detached from our stdio
    # so that a $(...) caller doesn't hang; nohup: survive the terminal
    # closing. Its cwd is STATE_DIR, where an hs_err file would land.
    (
        [[ -n "$STATE_LOCK_FD" ]] && exec {STATE_LOCK_FD}>&-
        cd "$STATE_DIR"
        exec nohup java "${jvm_opts[@]}" \
            -Dlog4j2.configurationFile="$STATE_DIR/log4j2.xml" \
            -Dlambent.kafka.logfile="$LOGFILE" \
            -Dkafka.logs.dir="$STATE_DIR" \
            -cp "$LIBS/*" kafka.Kafka "$CONFIG"
    ) </dev/null >>"$LOGFILE" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$PIDFILE"
    deadline=$((SECONDS + START_TIMEOUT))
    # Phase 1: the broker port speaks Kafka (cheap, pure bash).
    while ! kafka_answers "$port"; do
        if ! pid_alive "$pid"; then
            if tail -n "+$((log_start + 1))" "$LOGFILE" 2>/dev/null | grep -q 'Address already in use'; then
                return 2
            fi
            log "error: Kafka exited during startup"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "error: Kafka did not answer on 127.0.0.1:$port within ${START_TIMEOUT}s"
            return 1
        fi
        sleep 0.25
    done
    # Phase 2: it serves metadata (the broker has caught up with the controller).
    while ! metadata_ok "$port" $((deadline - SECONDS > 5 ? deadline - SECONDS : 5)); do
        if ! pid_alive "$pid"; then
            log "error: Kafka exited during startup"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "error: Kafka did not answer a metadata request on 127.0.0.1:$port within ${START_TIMEOUT}s"
            return 1
        fi
        sleep 0.5
    done
    if ! is_kafka_pid "$pid"; then
        log "error: Kafka (pid $pid) exited during startup"
        return 1
    fi
}

do_start() {
    local attempt port cport rc addr ports t0 password
    if is_running; then
        cat "$BOOTFILE"
        return 0
    fi
    # A leftover that doesn't answer (stale pidfile, hung broker, one without
    # our password): clean it up.
    do_stop
    ensure_java 17
    ensure_kafka_libs
    password="$(ensure_secret_file "$PASSFILE")"
    write_log4j2
    write_probe_properties "$password"
    for ((attempt = 1; attempt <= PORT_ATTEMPTS; attempt++)); do
        ports="$(free_loopback_ports "$PYTHON" 2)"
        port="$(sed -n 1p <<<"$ports")"
        cport="$(sed -n 2p <<<"$ports")"
        write_server_properties "$port" "$cport" "$password"
        format_storage
        t0="${EPOCHREALTIME/./}"
        log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$port (controller 127.0.0.1:$cport; state in $STATE_DIR)"
        rc=0
        try_start "$port" "$cport" || rc=$?
        case "$rc" in
        0)
            addr="127.0.0.1:$port"
            printf '%s\n' "$addr" >"$BOOTFILE"
            log "Kafka ready (pid $(pid_from_file)) at $addr, SASL PLAIN as $SASL_USER (password in $PASSFILE);" \
                "the JVM took $(elapsed_since "$t0") to answer"
            printf '%s\n' "$addr"
            return 0
            ;;
        2)
            log "port $port or $cport was taken before Kafka could bind it; retrying"
            do_stop
            ;;
        *)
            log_tail 30
            do_stop
            return 1
            ;;
        esac
    done
    log "error: could not start Kafka after $PORT_ATTEMPTS attempts"
    log_tail 20
    return 1
}

do_bootstrap() {
    if is_running; then
        cat "$BOOTFILE"
        return 0
    fi
    log "Kafka is not running (state dir $STATE_DIR)"
    return 1
}

# do_password: the password clients log in with, once a start has made it.
do_password() {
    if read_secret_file "$PASSFILE"; then
        return 0
    fi
    log "no Kafka password in $STATE_DIR yet (\`${0##*/} start $STATE_DIR\` makes it)"
    return 1
}

[[ $# -eq 2 ]] || usage
CMD="$1"
[[ -n "$2" ]] || usage
case "$CMD" in
start)
    mkdir -p "$2"
    ;;
stop | bootstrap | password)
    if [[ ! -d "$2" ]]; then
        [[ "$CMD" == stop ]] && exit 0
        log "Kafka is not running (no state dir $2)"
        exit 1
    fi
    ;;
*) usage ;;
esac
STATE_DIR="$(cd "$2" && pwd -P)"
# server.properties can't carry these in log.dirs (',' separates dirs, '\'
# escapes); newlines would break the /proc cmdline check.
case "$STATE_DIR" in
*[,\\$'\n']*) die "STATE_DIR must not contain ',', '\\' or a newline: $STATE_DIR" ;;
esac
PIDFILE="$STATE_DIR/kafka.pid"
BOOTFILE="$STATE_DIR/kafka.bootstrap"
LOGFILE="$STATE_DIR/kafka.log"
CONFIG="$STATE_DIR/server.properties"
DATA_DIR="$STATE_DIR/data"
PASSFILE="$STATE_DIR/kafka.password"
# Any python3 can pick ports and probe SASL; find_python (3.11+) only if there's none.
PYTHON="$(command -v python3 2>/dev/null)" || PYTHON="$(find_python)"

# One start/stop at a time per STATE_DIR (bootstrap and password only read). bash passes
# this fd on to children, so try_start closes it for the broker JVM, which
# would otherwise hold the lock for its whole life.
STATE_LOCK_FD=
if [[ "$CMD" != bootstrap && "$CMD" != password ]] && command -v flock >/dev/null 2>&1; then
    exec {STATE_LOCK_FD}>"$STATE_DIR/kafka.lock"
    if ! flock -n "$STATE_LOCK_FD"; then
        log "another ${0##*/} is working on $STATE_DIR; waiting for it"
        flock "$STATE_LOCK_FD"
    fi
fi

case "$CMD" in
start) do_start ;;
stop) do_stop ;;
bootstrap) do_bootstrap ;;
password) do_password ;;
esac
