#!/usr/bin/env bash
# Manage a private, throwaway redis-server bound to 127.0.0.1 on a free port.
#
#   scripts/redis.sh start STATE_DIR   start (or reuse) it; print its URL on stdout
#   scripts/redis.sh stop  STATE_DIR   stop it (no error if it isn't running)
#   scripts/redis.sh url   STATE_DIR   print its URL if it is running (else exit 1)
#
# STATE_DIR holds redis.pid, redis.url, redis.log, redis.password and redis.conf.
# Persistence is off (no RDB, no AOF) and eviction is disabled. Progress
# messages go to stderr.
#
# The server requires a password: generated on the first start (32 random
# bytes, hex) into redis.password (mode 0600) and reused after. It reaches
# redis-server through redis.conf (mode 0600, `requirepass ...`), never its
# command line, and redis-cli through REDISCLI_AUTH, never -a. The URL
# (redis://:PASSWORD@127.0.0.1:PORT/0, in redis.url, mode 0600) carries it;
# log lines show it masked.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_TIMEOUT=10   # seconds to wait for PONG after starting
STOP_TIMEOUT=10    # seconds to wait after SIGTERM before SIGKILL
PORT_ATTEMPTS=3    # retries if the chosen port gets taken before redis binds it

usage() {
    echo "usage: ${0##*/} {start|stop|url} STATE_DIR" >&2
    exit 2
}

# pid_from_file: print the PID recorded in the pidfile, if it is a number.
pid_from_file() {
    pid_in_file "$PIDFILE"
}

# is_redis_pid PID: the process is alive and (where /proc tells us) is a
# redis-server, so that a recycled PID never gets signalled.
is_redis_pid() {
    local pid="$1" comm
    pid_alive "$pid" || return 1
    if [[ -r "/proc/$pid/comm" ]]; then
        comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
        [[ "$comm" == redis-server* || "$comm" == redis-check-* ]] || return 1
    fi
    return 0
}

# read_password: print the password from the password file, if it holds one.
read_password() {
    local password
    [[ -f "$PASSFILE" ]] || return 1
    password="$(tr -d '[:space:]' <"$PASSFILE" 2>/dev/null)" || return 1
    [[ "$password" =~ ^[0-9a-f]{32,}$ ]] || return 1
    printf '%s\n' "$password"
}

# ensure_password: make sure the password file holds a password (generated
# once, then reused) and is mode 0600; print it.
ensure_password() {
    local password tmp
    if password="$(read_password)"; then
        chmod 600 "$PASSFILE"
        printf '%s\n' "$password"
        return 0
    fi
    password="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    [[ "$password" =~ ^[0-9a-f]{64}$ ]] || die "could not read 32 random bytes from /dev/urandom"
    tmp="$PASSFILE.tmp.$$"
    # umask 077 in a subshell: the file is created 0600, never readable by others, not even briefly.
    (umask 077 && rm -f "$tmp" && printf '%s\n' "$password" >"$tmp" && mv -f "$tmp" "$PASSFILE")
    printf '%s\n' "$password"
}

# private_write FILE TEXT: write TEXT (plus a newline) to FILE, created mode 0600.
private_write() {
    local tmp="$1.tmp.$$"
    (umask 077 && rm -f "$tmp" && printf '%s\n' "$2" >"$tmp" && chmod 600 "$tmp" && mv -f "$tmp" "$1")
}

# url_for PORT PASSWORD: the URL clients use.
url_for() { printf 'redis://:%s@127.0.0.1:%s/0\n' "$2" "$1"; }

# port_from_url: extract the port from the URL file (redis://:PASSWORD@127.0.0.1:PORT/0).
port_from_url() {
    local url port
    [[ -f "$URLFILE" ]] || return 1
    url="$(tr -d '[:space:]' <"$URLFILE")"
    port="${url##*@}"            # after the user info, if any
    port="${port#redis://}"
    port="${port#127.0.0.1:}"
    port="${port%%/*}"
    [[ "$port" =~ ^[0-9]+$ ]] || return 1
    printf '%s\n' "$port"
}

# ping_port PORT: redis-server on 127.0.0.1:PORT answers PING to our password
# (given to redis-cli in REDISCLI_AUTH: the command line is visible to ps).
ping_port() {
    local out password
    password="$(read_password)" || return 1
    if command -v timeout >/dev/null 2>&1; then
        out="$(REDISCLI_AUTH="$password" timeout 3 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" || return 1
    else
        out="$(REDISCLI_AUTH="$password" redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" || return 1
    fi
    [[ "$out" == PONG ]]
}

# is_running: our pidfile names a live redis-server, the URL file holds the URL
# with our password, and its port answers PING with that password (so a
# leftover started without one, or with another, is never reused).
is_running() {
    local pid port password
    pid="$(pid_from_file)" || return 1
    is_redis_pid "$pid" || return 1
    port="$(port_from_url)" || return 1
    password="$(read_password)" || return 1
    [[ "$(tr -d '[:space:]' <"$URLFILE")" == "$(url_for "$port" "$password")" ]] || return 1
    ping_port "$port"
}

free_port() {
    "$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
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
    if pid="$(pid_from_file)" && is_redis_pid "$pid"; then
        stop_pid "$pid" redis-server "$STOP_TIMEOUT"
    fi
    rm -f "$PIDFILE" "$URLFILE"
}

# try_start PORT: start redis-server on PORT and wait for PONG.
# Returns 0 on success, 1 on failure, 2 if the port was already in use.
try_start() {
    local port="$1" log_start deadline pid
    log_start=0
    [[ -f "$LOGFILE" ]] && log_start="$(wc -l <"$LOGFILE")"
    rm -f "$PIDFILE"
    # --daemonize yes: the parent returns once the child has forked; the
    # child reopens stdio on /dev/null, so a $(...) caller doesn't hang.
    # shellcheck disable=SC2094  # redis-server appends to its own log; so do we
    # The config file (first argument) holds requirepass; nothing secret is on the command line.
    if ! redis-server "$CONFFILE" \
        --bind 127.0.0.1 \
        --port "$port" \
        --dir "$STATE_DIR" \
        --daemonize yes \
        --pidfile "$PIDFILE" \
        --logfile "$LOGFILE" \
        --save '' \
        --appendonly no \
        --maxmemory-policy noeviction \
        >/dev/null 2>>"$LOGFILE"; then
        return 1
    fi
    deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ping_port "$port" && pid="$(pid_from_file)" && is_redis_pid "$pid"; then
            return 0
        fi
        if tail -n "+$((log_start + 1))" "$LOGFILE" 2>/dev/null | grep -q 'Address already in use'; then
            return 2
        fi
        sleep 0.1
    done
    return 1
}

do_start() {
    local attempt port rc url password
    if is_running; then
        cat "$URLFILE"
        return 0
    fi
    # A leftover that doesn't answer (stale pidfile, hung server): clean it up.
    do_stop
    ensure_redis_server
    PYTHON="$(find_python)"
    password="$(ensure_password)"
    private_write "$CONFFILE" "requirepass $password"
    for ((attempt = 1; attempt <= PORT_ATTEMPTS; attempt++)); do
        port="$(free_port)"
        log "starting redis-server on 127.0.0.1:$port (state in $STATE_DIR)"
        rc=0
        try_start "$port" || rc=$?
        case "$rc" in
        0)
            url="$(url_for "$port" "$password")"
            private_write "$URLFILE" "$url"
            log "redis-server ready (pid $(pid_from_file)) at $(mask_url "$url") (password in $PASSFILE)"
            printf '%s\n' "$url"
            return 0
            ;;
        2)
            log "port $port was taken before redis-server could bind it; retrying"
            do_stop
            ;;
        *)
            log "error: redis-server did not answer PING on 127.0.0.1:$port within ${START_TIMEOUT}s"
            log_tail 20
            do_stop
            return 1
            ;;
        esac
    done
    log "error: could not start redis-server after $PORT_ATTEMPTS attempts"
    log_tail 20
    return 1
}

do_url() {
    if is_running; then
        cat "$URLFILE"
        return 0
    fi
    log "redis-server is not running (state dir $STATE_DIR)"
    return 1
}

[[ $# -eq 2 ]] || usage
CMD="$1"
[[ -n "$2" ]] || usage
case "$CMD" in
start)
    mkdir -p "$2"
    ;;
stop | url)
    if [[ ! -d "$2" ]]; then
        [[ "$CMD" == stop ]] && exit 0
        log "redis-server is not running (no state dir $2)"
        exit 1
    fi
    ;;
*) usage ;;
esac
# Absolute paths: redis-server chdirs into --dir, so relative pid/log paths
# would otherwise resolve against the wrong directory.
STATE_DIR="$(cd "$2" && pwd -P)"
PIDFILE="$STATE_DIR/redis.pid"
URLFILE="$STATE_DIR/redis.url"
LOGFILE="$STATE_DIR/redis.log"
PASSFILE="$STATE_DIR/redis.password"
CONFFILE="$STATE_DIR/redis.conf"

case "$CMD" in
start) do_start ;;
stop) do_stop ;;
url) do_url ;;
esac
