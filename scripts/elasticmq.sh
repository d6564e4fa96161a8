#!/usr/bin/env bash
# Manage a private ElasticMQ server (an SQS-compatible queue server) for the
# `sqs` event source, behind the SQS guard (runtime/sqsguard.py), on a free
# port of 127.0.0.1.
#
#   scripts/elasticmq.sh start    STATE_DIR   start (or reuse) it; print its endpoint URL
#   scripts/elasticmq.sh stop     STATE_DIR   stop it (no error if it isn't running)
#   scripts/elasticmq.sh endpoint STATE_DIR   print its endpoint URL if running (else exit 1)
#   scripts/elasticmq.sh secret   STATE_DIR   print the secret clients sign with (else exit 1)
#
# Functions share the host's network and ElasticMQ checks no credentials, so
# ElasticMQ is never on the host's network: the guard binds 127.0.0.1:PORT,
# moves into a network namespace of its own (needs root or CAP_SYS_ADMIN) and
# starts ElasticMQ there as its child, bound to 127.0.0.1:9324 of that
# namespace. The guard forwards only requests signed (AWS Signature Version 4)
# with access key id `lambent` and the secret in STATE_DIR/sqs.secret
# (32 random bytes, hex, made on the first start, mode 0600, reused after;
# it reaches the guard in its environment, never a command line). Clients:
# aws_access_key_id=lambent, aws_secret_access_key=`secret STATE_DIR`
# (Lambent: sqs.access_key_id / sqs.secret_access_key). Others get SQS's
# MissingAuthenticationToken, InvalidClientTokenId or SignatureDoesNotMatch.
# ElasticMQ dies with the guard, even by kill -9 (PR_SET_PDEATHSIG).
#
# Where a network namespace cannot be made (not root), start refuses, unless
# LAMBENT_SQS_UNGUARDED=1: then ElasticMQ itself listens on 127.0.0.1:PORT
# and ANY local process, every function included, can read, delete and send
# the messages of every queue (it takes any key).
#
# The server's jars come from Maven Central (scripts/elasticmq-pom.xml,
# resolved with mvn into ${LAMBENT_CACHE:-~/.cache/lambent}/elasticmq-VERSION/libs
# on the first run; later runs don't call mvn). STATE_DIR holds custom.conf
# (rewritten on every start), sqsguard.pid (the guard), elasticmq.pid (the
# JVM), elasticmq.port (kept: a restart in the same STATE_DIR reuses the port
# while it is free, so clients find the server again at the same URL),
# sqs.secret, sqsguard.log, elasticmq.log and the H2 database messages.mv.db,
# where ElasticMQ keeps queues and messages (receive counts and visibility
# included) across stop/start. For an empty server, stop it and remove
# STATE_DIR. Progress goes to stderr; stdout only gets the URL,
# http://127.0.0.1:PORT.
#
# The SQS API answers on that port only (the statistics UI is off). Queue
# URLs are http://127.0.0.1:PORT/000000000000/NAME (the guard's address) and
# queue ARNs arn:aws:sqs:us-east-1:000000000000:NAME.
#
# Needs Java 17+ (ElasticMQ 1.6 runs on it) and, on the first run only, Maven
# (both apt-installed if missing and we are root), and Lambent's python (the
# guard; it also picks free ports and probes the API).
#
# Environment:
#   LAMBENT_PYTHON               the python that runs the guard (default: the repository's .venv/bin/python)
#   LAMBENT_SQS_UNGUARDED=1      without a network namespace: run ElasticMQ unguarded (see above)
#   LAMBENT_CACHE                cache root (default ~/.cache/lambent)
#   LAMBENT_ELASTICMQ_VERSION    ElasticMQ release from Maven Central (default 1.6.11)
#   LAMBENT_ELASTICMQ_JVM_OPTS   JVM flags for the server (default: small heap, SerialGC)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ELASTICMQ_VERSION="${LAMBENT_ELASTICMQ_VERSION:-1.6.11}"
CACHE_ROOT="${LAMBENT_CACHE:-$HOME/.cache/lambent}"
EMQ_HOME="$CACHE_ROOT/elasticmq-$ELASTICMQ_VERSION"
LIBS="$EMQ_HOME/libs"
POM="$LAMBENT_ROOT/scripts/elasticmq-pom.xml"
MAIN_CLASS=org.elasticmq.server.Main
GUARD_MODULE=runtime.sqsguard
INNER_PORT=9324    # ElasticMQ's port inside the guard's network namespace (runtime/sqsguard.py INNER_PORT)

START_TIMEOUT=60   # seconds from launching the JVM until it must answer ListQueues
STOP_TIMEOUT=25    # seconds to wait after SIGTERM before SIGKILL (the guard gives ElasticMQ 20)
PORT_ATTEMPTS=3    # retries if the chosen port gets taken before the guard binds it

# Light on a 2-core box, as scripts/kafka.sh's broker: small heap, serial GC,
# C1 JIT only, no hsperfdata file in /tmp.
DEFAULT_JVM_OPTS="-Xms64m -Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError -XX:-UsePerfData -Djava.awt.headless=true"

usage() {
    echo "usage: ${0##*/} {start|stop|endpoint|secret} STATE_DIR" >&2
    exit 2
}

# ---------------------------------------------------------------- jars

# ensure_elasticmq_libs: the server's jars in LIBS (scripts/lib.sh resolve_maven_libs).
ensure_elasticmq_libs() {
    resolve_maven_libs "$EMQ_HOME" "$POM" elasticmq.version "$ELASTICMQ_VERSION" elasticmq-server_2.13 \
        "ElasticMQ $ELASTICMQ_VERSION"
}


# ---------------------------------------------------------------- process

# cmdline_has PID ARG...: /proc says PID is alive and each ARG is one of its
# arguments. Without /proc we never claim a PID.
cmdline_has() {
    local pid="$1" args arg
    shift
    pid_alive "$pid" || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    args="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    for arg in "$@"; do
        grep -Fxq -- "$arg" <<<"$args" || return 1
    done
}

# is_elasticmq_pid PID: a live java running ElasticMQ's main with this
# STATE_DIR's config, so a recycled PID (or another state dir's server)
# never gets signalled.
is_elasticmq_pid() {
    [[ -r "/proc/$1/comm" && "$(cat "/proc/$1/comm" 2>/dev/null)" == java ]] &&
        cmdline_has "$1" "$MAIN_CLASS" "-Dconfig.file=$CONFIG"
}

# is_guard_pid PID: a live guard of this STATE_DIR (its --pid-file names it).
is_guard_pid() {
    cmdline_has "$1" "$GUARD_MODULE" --pid-file "$EMQ_PIDFILE"
}

# stored_port: the port this STATE_DIR's server listens (or last listened) on.
stored_port() {
    local port
    [[ -f "$PORTFILE" ]] || return 1
    port="$(tr -d '[:space:]' <"$PORTFILE")"
    [[ "$port" =~ ^[0-9]+$ ]] || return 1
    printf '%s\n' "$port"
}

# guard_answers PORT: the guard on 127.0.0.1:PORT answers a ListQueues signed
# with our secret and refuses an unsigned one.
guard_answers() {
    local secret
    secret="$(read_secret_file "$SECRETFILE")" || return 1
    (cd "$LAMBENT_ROOT" && LAMBENT_SQS_GUARD_SECRET="$secret" timeout 15 "$GUARD_PYTHON" -m "$GUARD_MODULE" \
        --probe "$(endpoint_url "$1")" 2>/dev/null)
}

# sqs_answers PORT: an unguarded ElasticMQ on 127.0.0.1:PORT answers an SQS
# ListQueues (Query API, as `curl '/?Action=ListQueues'` would).
sqs_answers() {
    timeout 5 "$PYTHON" -c 'import sys, urllib.request
url = "http://127.0.0.1:%s/?Action=ListQueues&Version=2012-11-05" % sys.argv[1]
try:
    with urllib.request.urlopen(url, timeout=3) as answer:
        sys.exit(0 if b"ListQueuesResponse" in answer.read() else 1)
except OSError:
    sys.exit(1)' "$1" 2>/dev/null
}

# port_free PORT: nothing listens on 127.0.0.1:PORT (we can bind it).
port_free() {
    "$PYTHON" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()' "$1" 2>/dev/null
}

# is_running: our pidfiles name a live guard and ElasticMQ of this STATE_DIR
# (or, unguarded, a live ElasticMQ) and the port answers as it should.
is_running() {
    local pid port
    pid="$(pid_in_file "$EMQ_PIDFILE")" || return 1
    is_elasticmq_pid "$pid" || return 1
    port="$(stored_port)" || return 1
    if pid="$(pid_in_file "$PIDFILE")"; then
        is_guard_pid "$pid" && guard_answers "$port"
    else
        unguarded && sqs_answers "$port"
    fi
}

unguarded() { [[ "${LAMBENT_SQS_UNGUARDED:-0}" == 1 ]]; }

endpoint_url() { printf 'http://127.0.0.1:%s\n' "$1"; }

# elapsed_since T0: print the seconds (one decimal) since T0, a
# microsecond timestamp taken as ${EPOCHREALTIME/./}.
elapsed_since() {
    local us=$((${EPOCHREALTIME/./} - $1))
    printf '%d.%ds\n' $((us / 1000000)) $((us / 100000 % 10))
}

log_tail() {
    local file
    for file in "$GUARD_LOGFILE" "$LOGFILE"; do
        if [[ -f "$file" ]]; then
            echo "---- last lines of $file ----" >&2
            tail -n "${1:-20}" "$file" >&2
            echo "----" >&2
        fi
    done
}

# do_stop: the guard (which stops its ElasticMQ), then any ElasticMQ of this
# STATE_DIR still there (an unguarded one).
do_stop() {
    local pid deadline
    if pid="$(pid_in_file "$PIDFILE")" && is_guard_pid "$pid"; then
        stop_pid "$pid" "the SQS guard and its ElasticMQ" "$STOP_TIMEOUT"
    fi
    if pid="$(pid_in_file "$EMQ_PIDFILE")" && is_elasticmq_pid "$pid"; then
        # A guard's child dies with it (SIGKILL from the kernel): give that a moment first.
        deadline=$((SECONDS + 5))
        while is_elasticmq_pid "$pid" && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if is_elasticmq_pid "$pid"; then
            stop_pid "$pid" ElasticMQ "$STOP_TIMEOUT"
        fi
    fi
    rm -f "$PIDFILE" "$EMQ_PIDFILE"   # the port file stays: the next start reuses the port
}

# ---------------------------------------------------------------- config

# hocon_string S: S as a HOCON quoted string (JSON string syntax).
hocon_string() {
    "$PYTHON" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"
}

# write_config PORT BIND_PORT: custom.conf for a server bound to
# 127.0.0.1:BIND_PORT (of the guard's namespace, or of the host unguarded)
# whose queue URLs name 127.0.0.1:PORT (the guard), and whose queues and
# messages live in STATE_DIR's H2 database (with messages-storage on,
# ElasticMQ keeps the queues' definitions there too, so queues-storage's
# file is never written; it is on all the same, as ElasticMQ documents).
write_config() {
    local port="$1" bind_port="$2"
    cat >"$CONFIG" <<EOC
# Written by scripts/elasticmq.sh; rewritten on every start.
include classpath("application.conf")

# Queue URLs name the address clients reach: the guard's.
node-address {
  protocol = "http"
  host = "127.0.0.1"
  port = $port
  context-path = ""
}
generate-node-address = false

rest-sqs {
  enabled = true
  bind-port = $bind_port
  bind-hostname = "127.0.0.1"
  sqs-limits = strict
}

# The statistics UI/API: not needed, and one port fewer to find.
rest-stats {
  enabled = false
  bind-port = 0
  bind-hostname = "127.0.0.1"
}

# Queue ARNs as AWS writes them: arn:aws:sqs:us-east-1:000000000000:NAME.
aws {
  region = "us-east-1"
  accountId = "000000000000"
}

queues-storage {
  enabled = true
  path = $(hocon_string "$STATE_DIR/queues.conf")
}

messages-storage {
  enabled = true
  driver-class = "org.h2.Driver"
  # WRITE_DELAY=0: each change is in the file before SQS answers, so a kill -9 (or a crash) loses no
  # message, queue or delete that was acknowledged (H2's default keeps up to half a second in memory).
  uri = $(hocon_string "jdbc:h2:file:$STATE_DIR/messages;WRITE_DELAY=0")
  username = ""
  password = ""
  prune-data-on-init = false
}
EOC
}

# ---------------------------------------------------------------- start

# new_log_has LINE0 REGEX: LOGFILE, past its first LINE0 lines, matches REGEX.
new_log_has() {
    tail -n "+$(($1 + 1))" "$LOGFILE" 2>/dev/null | grep -qiE "$2"
}

# can_unshare_network: this user may make a network namespace (root, or CAP_SYS_ADMIN).
can_unshare_network() {
    "$GUARD_PYTHON" -c 'import ctypes, sys
sys.exit(0 if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0 else 1)' 2>/dev/null
}

# launch_guarded PORT SECRET: the guard on 127.0.0.1:PORT, ElasticMQ its child
# in its own network namespace. Sets LAUNCHED (the guard's PID).
launch_guarded() {
    local port="$1" secret="$2" jvm_opts
    # shellcheck disable=SC2206  # word-splitting the JVM flags is intended
    jvm_opts=(${LAMBENT_ELASTICMQ_JVM_OPTS:-$DEFAULT_JVM_OPTS})
    # Backgrounded itself (so $! is its PID), detached from our stdio so that
    # a $(...) caller doesn't hang; nohup: survive the terminal closing. The
    # secret reaches it in its environment (an export, not argv); it runs from
    # the repository (the runtime package), ElasticMQ in STATE_DIR (where an
    # hs_err file would land), logging to LOGFILE.
    (
        [[ -n "$STATE_LOCK_FD" ]] && exec {STATE_LOCK_FD}>&-
        cd "$LAMBENT_ROOT"
        export LAMBENT_SQS_GUARD_SECRET="$secret"
        exec nohup "$GUARD_PYTHON" -m "$GUARD_MODULE" --listen "127.0.0.1:$port" --namespace \
            --pid-file "$EMQ_PIDFILE" --child-log "$LOGFILE" --child-cwd "$STATE_DIR" -- \
            java "${jvm_opts[@]}" "-Dconfig.file=$CONFIG" -cp "$LIBS/*" "$MAIN_CLASS"
    ) </dev/null >>"$GUARD_LOGFILE" 2>&1 &
    LAUNCHED=$!
    printf '%s\n' "$LAUNCHED" >"$PIDFILE"
}

# launch_unguarded PORT: ElasticMQ itself on 127.0.0.1:PORT. Sets LAUNCHED.
launch_unguarded() {
    local jvm_opts
    # shellcheck disable=SC2206
    jvm_opts=(${LAMBENT_ELASTICMQ_JVM_OPTS:-$DEFAULT_JVM_OPTS})
    (
        [[ -n "$STATE_LOCK_FD" ]] && exec {STATE_LOCK_FD}>&-
        cd "$STATE_DIR"
        exec nohup java "${jvm_opts[@]}" "-Dconfig.file=$CONFIG" -cp "$LIBS/*" "$MAIN_CLASS"
    ) </dev/null >>"$LOGFILE" 2>&1 &
    LAUNCHED=$!
    printf '%s\n' "$LAUNCHED" >"$EMQ_PIDFILE"
}

# try_start PORT SECRET: launch the server and wait until it answers
# ListQueues (guarded: signed, and an unsigned one refused).
# Returns 0 on success, 1 on failure, 2 if the port was already in use.
try_start() {
    local port="$1" secret="$2" log_start deadline rc pid
    log_start=0
    [[ -f "$LOGFILE" ]] && log_start="$(wc -l <"$LOGFILE")"
    rm -f "$PIDFILE" "$EMQ_PIDFILE"
    if unguarded; then
        launch_unguarded "$port"
    else
        launch_guarded "$port" "$secret"
    fi
    deadline=$((SECONDS + START_TIMEOUT))
    # Ready when this JVM has logged that its REST server is bound and the
    # port answers: the answer alone could come from another server that
    # already holds the port.
    while ! { new_log_has "$log_start" 'Started SQS rest server' &&
        if unguarded; then sqs_answers "$port"; else guard_answers "$port"; fi; }; do
        if unguarded && new_log_has "$log_start" 'BindException|Address already in use'; then
            return 2
        fi
        if ! pid_alive "$LAUNCHED"; then
            rc=0
            wait "$LAUNCHED" 2>/dev/null || rc=$?
            ((rc == 3)) && return 2          # the guard: its port is taken
            log "error: ElasticMQ or its guard exited during startup (exit code $rc)"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "error: ElasticMQ did not answer ListQueues on 127.0.0.1:$port within ${START_TIMEOUT}s"
            return 1
        fi
        sleep 0.25
    done
    if ! pid="$(pid_in_file "$EMQ_PIDFILE")" || ! is_elasticmq_pid "$pid"; then
        log "error: ElasticMQ exited during startup"
        return 1
    fi
}

# pick_port ATTEMPT: the stored port on the first attempt while it is free
# (a restart keeps its URL), else a new free one.
pick_port() {
    local port
    if (($1 == 1)) && port="$(stored_port)" && port_free "$port"; then
        printf '%s\n' "$port"
        return 0
    fi
    if port="$(stored_port)"; then
        log "port $port is taken; picking a new one (clients must use the new URL)"
    fi
    free_loopback_ports "$PYTHON" 1
}

# check_can_guard: the guard can run here (its python, a network namespace), or
# LAMBENT_SQS_UNGUARDED=1 says to go without it, loudly.
check_can_guard() {
    if unguarded; then
        log "WARNING: LAMBENT_SQS_UNGUARDED=1: ElasticMQ runs WITHOUT its guard, on the host's loopback; it" \
            "checks no credentials, so ANY local process, every function included, can list, read, delete and" \
            "send the messages of every queue"
        return 0
    fi
    [[ -x "$GUARD_PYTHON" ]] ||
        die "no python at $GUARD_PYTHON for the SQS guard: run scripts/venv.sh, or set LAMBENT_PYTHON to a python with Lambent's dependencies"
    can_unshare_network ||
        die "cannot make a network namespace for ElasticMQ (needs root or CAP_SYS_ADMIN): without it ElasticMQ" \
            "would be open to every local process, functions included. Run as root, or set LAMBENT_SQS_UNGUARDED=1" \
            "to run it unguarded anyway"
}

do_start() {
    local attempt port rc t0 secret mode
    if is_running; then
        endpoint_url "$(stored_port)"
        return 0
    fi
    # A leftover that doesn't answer (stale pidfile, hung server): clean it up.
    do_stop
    check_can_guard
    ensure_java 17
    ensure_elasticmq_libs
    secret="$(ensure_secret_file "$SECRETFILE")"
    for ((attempt = 1; attempt <= PORT_ATTEMPTS; attempt++)); do
        port="$(pick_port "$attempt")"
        printf '%s\n' "$port" >"$PORTFILE"
        if unguarded; then
            write_config "$port" "$port"
            mode="UNGUARDED (any local process can use it)"
        else
            write_config "$port" "$INNER_PORT"
            mode="behind its guard (SigV4 as lambent, secret in $SECRETFILE)"
        fi
        t0="${EPOCHREALTIME/./}"
        log "starting ElasticMQ $ELASTICMQ_VERSION on 127.0.0.1:$port (state in $STATE_DIR)"
        rc=0
        try_start "$port" "$secret" || rc=$?
        case "$rc" in
        0)
            log "ElasticMQ ready (pid $(pid_in_file "$EMQ_PIDFILE")) at $(endpoint_url "$port"), $mode;" \
                "it took $(elapsed_since "$t0") to answer"
            endpoint_url "$port"
            return 0
            ;;
        2)
            log "port $port was taken before it could be bound; retrying"
            do_stop
            ;;
        *)
            log_tail 30
            do_stop
            return 1
            ;;
        esac
    done
    log "error: could not start ElasticMQ after $PORT_ATTEMPTS attempts"
    log_tail 20
    return 1
}

do_endpoint() {
    if is_running; then
        endpoint_url "$(stored_port)"
        return 0
    fi
    log "ElasticMQ is not running (state dir $STATE_DIR)"
    return 1
}

# do_secret: the secret clients sign with, once a start has made it.
do_secret() {
    if read_secret_file "$SECRETFILE"; then
        return 0
    fi
    log "no SQS secret in $STATE_DIR yet (\`${0##*/} start $STATE_DIR\` makes it)"
    return 1
}

[[ $# -eq 2 ]] || usage
CMD="$1"
[[ -n "$2" ]] || usage
case "$CMD" in
start)
    mkdir -p "$2"
    ;;
stop | endpoint | secret)
    if [[ ! -d "$2" ]]; then
        [[ "$CMD" == stop ]] && exit 0
        log "ElasticMQ is not running (no state dir $2)"
        exit 1
    fi
    ;;
*) usage ;;
esac
STATE_DIR="$(cd "$2" && pwd -P)"
# A newline would break the /proc cmdline check; ';' separates settings in an H2 URL.
case "$STATE_DIR" in
*[\;$'\n']*) die "STATE_DIR must not contain ';' or a newline: $STATE_DIR" ;;
esac
PIDFILE="$STATE_DIR/sqsguard.pid"
EMQ_PIDFILE="$STATE_DIR/elasticmq.pid"
PORTFILE="$STATE_DIR/elasticmq.port"
LOGFILE="$STATE_DIR/elasticmq.log"
GUARD_LOGFILE="$STATE_DIR/sqsguard.log"
CONFIG="$STATE_DIR/custom.conf"
SECRETFILE="$STATE_DIR/sqs.secret"
GUARD_PYTHON="${LAMBENT_PYTHON:-$LAMBENT_ROOT/.venv/bin/python}"
PYTHON="$(command -v python3 2>/dev/null)" || PYTHON="$(find_python)"

# One start/stop at a time per STATE_DIR (endpoint and secret only read). bash
# passes this fd on to children, so the launchers close it for the server,
# which would otherwise hold the lock for its whole life.
STATE_LOCK_FD=
if [[ "$CMD" != endpoint && "$CMD" != secret ]] && command -v flock >/dev/null 2>&1; then
    exec {STATE_LOCK_FD}>"$STATE_DIR/elasticmq.lock"
    if ! flock -n "$STATE_LOCK_FD"; then
        log "another ${0##*/} is working on $STATE_DIR; waiting for it"
        flock "$STATE_LOCK_FD"
    fi
fi

case "$CMD" in
start) do_start ;;
stop) do_stop ;;
endpoint) do_endpoint ;;
secret) do_secret ;;
esac
