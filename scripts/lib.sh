# shellcheck shell=bash
# Shared helpers for the scripts in this directory. Source it; don't run it.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Every function writes its progress to stderr so that stdout stays clean for
# values a caller captures (e.g. the Redis URL printed by redis.sh).

# Repository root: the parent of the directory holding this file.
# shellcheck disable=SC2034  # used by the scripts that source this file
LAMBENT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# mask_url URL: URL with its password (user info) replaced by ***, for log lines.
mask_url() {
    if [[ "$1" =~ ^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):[^@/]*@(.*)$ ]]; then
        printf '%s:***@%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    else
        printf '%s\n' "$1"
    fi
}

# find_python: print the executable of the first python3.11+ interpreter found
# among python3.13, python3.12, python3.11 and python3 on PATH. pyenv shims for
# versions that aren't installed exist on PATH but fail when run, so each
# candidate is actually executed rather than just looked up.
find_python() {
    local cand path
    for cand in python3.13 python3.12 python3.11 python3; do
        path="$(command -v "$cand" 2>/dev/null)" || continue
        # Print the interpreter's real executable, which also resolves shims.
        if path="$("$path" -c 'import sys
if sys.version_info < (3, 11) or not sys.executable:
    sys.exit(1)
print(sys.executable)' 2>/dev/null)" && [[ -n "$path" ]]; then
            printf '%s\n' "$path"
            return 0
        fi
    done
    log "error: no python3.11+ found on PATH (tried python3.13, python3.12, python3.11, python3)"
    return 1
}

# apt_install PKG...: install Debian packages without questions, keeping existing config files; apt's
# output goes to stderr (stdout carries values a caller captures).
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >&2
}

# ensure_redis_server: make sure redis-server and redis-cli are on PATH. If
# they aren't and we are root on a system with apt-get, install Debian's
# redis-server package (which pulls in redis-tools for redis-cli). Note that
# the package also starts a system redis on port 6379 where an init system is
# running; we never use or touch that instance.
ensure_redis_server() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "error: redis-server/redis-cli not found on PATH; install Redis" \
            "(e.g. 'apt-get install redis-server' as root) and retry"
        return 1
    fi
    log "redis-server not found; installing Debian's redis-server package"
    apt_install redis-server || return 1
    hash -r
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        log "error: redis-server/redis-cli still not on PATH after installing the package"
        return 1
    fi
    log "installed $(redis-server --version | head -n1)"
}

# ensure_jail_tools: make sure what the jail around every sandbox needs is there: bwrap (Debian's
# bubblewrap), setpriv (util-linux) and libseccomp. If they aren't and we are root on a system with apt-get,
# install them. Without them `sandbox.isolation: auto` runs functions unjailed and says so loudly.
ensure_jail_tools() {
    if command -v bwrap >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 \
        && ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2'; then
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "warning: bwrap, setpriv or libseccomp is missing and cannot be installed here (not root, or no" \
            "apt-get): functions will run WITHOUT a jail; install bubblewrap, util-linux and libseccomp2"
        return 1
    fi
    log "installing the jail's tools: Debian's bubblewrap, util-linux and libseccomp2"
    apt_install bubblewrap util-linux libseccomp2 || return 1
    hash -r
    log "installed $(bwrap --version)"
}

# ensure_chromium: make sure Debian's chromium and chromium-driver are installed
# (/usr/bin/chromium and /usr/bin/chromedriver, which tests/test_console.py
# drives through Selenium). If they aren't and we are root on a system with
# apt-get, install both packages. apt's output goes to a temporary file and is
# shown only when the install fails: the packages pull in many libraries.
ensure_chromium() {
    if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "error: /usr/bin/chromium or /usr/bin/chromedriver not found; install them" \
            "(e.g. 'apt-get install chromium chromium-driver' as root) and retry"
        return 1
    fi
    log "chromium/chromedriver not found; installing Debian's chromium and chromium-driver packages"
    local out rc=0
    out="$(mktemp)"
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                chromium chromium-driver
    } >"$out" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        cat "$out" >&2
        rm -f "$out"
        log "error: installing chromium and chromium-driver failed (apt-get exit code $rc)"
        return 1
    fi
    rm -f "$out"
    if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
        log "error: /usr/bin/chromium or /usr/bin/chromedriver still missing after installing the packages"
        return 1
    fi
    log "installed $(/usr/bin/chromedriver --version 2>/dev/null | head -n1)"
}

# ensure_strace: make sure strace is on PATH (a test traces the event loop's close() calls with it); if it isn't
# and we are root on a system with apt-get, install Debian's strace package.
ensure_strace() {
    if command -v strace >/dev/null 2>&1; then
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "error: strace not found on PATH; install it (e.g. 'apt-get install strace' as root) and retry"
        return 1
    fi
    log "strace not found; installing Debian's strace package"
    apt_install strace || return 1
    hash -r
    command -v strace >/dev/null 2>&1
}

# java_major_version: print the major version (8, 11, 17, 21, ...) of the
# java on PATH.
java_major_version() {
    local out ver
    out="$(java -version 2>&1)" || return 1
    ver="$(printf '%s\n' "$out" | sed -nE 's/^[^"]* version "([0-9._]+)[^"]*".*$/\1/p' | head -n1)"
    [[ -n "$ver" ]] || return 1
    ver="${ver#1.}"   # "1.8.0_392" -> 8
    printf '%s\n' "${ver%%[._]*}"
}

# ensure_java [MIN_MAJOR]: make sure `java` on PATH is Java MIN_MAJOR (default
# 17) or newer. If it isn't and we are root on a system with apt-get, install
# Debian's openjdk-17-jre-headless package.
ensure_java() {
    local min="${1:-17}" major
    if command -v java >/dev/null 2>&1 && major="$(java_major_version)" && ((major >= min)); then
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "error: Java $min+ not found on PATH; install it" \
            "(e.g. 'apt-get install openjdk-17-jre-headless' as root) and retry"
        return 1
    fi
    log "Java $min+ not found on PATH; installing Debian's openjdk-17-jre-headless package"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        openjdk-17-jre-headless >&2 || return 1
    hash -r
    if ! major="$(java_major_version)" || ((major < min)); then
        log "error: java on PATH is still not Java $min+ after installing the package"
        return 1
    fi
    log "installed Java $major"
}

# ensure_maven: make sure `mvn` is on PATH. If it isn't and we are root on a
# system with apt-get, install Debian's maven package.
ensure_maven() {
    if command -v mvn >/dev/null 2>&1; then
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "error: mvn not found on PATH; install Maven" \
            "(e.g. 'apt-get install maven' as root) and retry"
        return 1
    fi
    log "mvn not found on PATH; installing Debian's maven package"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        maven >&2 || return 1
    hash -r
    if ! command -v mvn >/dev/null 2>&1; then
        log "error: mvn still not on PATH after installing the package"
        return 1
    fi
    log "installed $(mvn -v 2>/dev/null | head -n1)"
}

# free_loopback_ports PYTHON N: print N distinct TCP ports on 127.0.0.1, one
# a line, that were free a moment ago. All N sockets are bound at the same
# time so the ports differ; another process can still take one before the
# caller binds it, so callers should retry on "address in use".
free_loopback_ports() {
    "$1" -c 'import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
for s in socks:
    s.close()' "${2:-1}"
}

# private_write FILE TEXT: write TEXT (plus a newline) to FILE, created mode 0600 (never readable by
# others, not even briefly) and renamed into place.
private_write() {
    local tmp="$1.tmp.$$"
    (umask 077 && rm -f "$tmp" && printf '%s\n' "$2" >"$tmp" && chmod 600 "$tmp" && mv -f "$tmp" "$1")
}

# read_secret_file FILE: print the password FILE holds (32+ lower-case hex digits), if it holds one.
read_secret_file() {
    local password
    [[ -f "$1" ]] || return 1
    password="$(tr -d '[:space:]' <"$1" 2>/dev/null)" || return 1
    [[ "$password" =~ ^[0-9a-f]{32,}$ ]] || return 1
    printf '%s\n' "$password"
}

# ensure_secret_file FILE: make sure FILE holds a password (32 random bytes, hex: generated once, then
# reused) and is mode 0600; print it.
ensure_secret_file() {
    local password
    if password="$(read_secret_file "$1")"; then
        chmod 600 "$1"
        printf '%s\n' "$password"
        return 0
    fi
    password="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    [[ "$password" =~ ^[0-9a-f]{64}$ ]] || die "could not read 32 random bytes from /dev/urandom"
    private_write "$1" "$password"
    printf '%s\n' "$password"
}

# ---------------------------------------------------------------- jars from Maven Central

# resolve_maven_libs HOME POM PROPERTY VERSION MAIN_JAR WHAT: copy the runtime dependencies of POM (with
# -DPROPERTY=VERSION) into HOME/libs with mvn, its local repository in $LAMBENT_CACHE/m2-repository (not ~/.m2),
# unless HOME/libs.stamp says they are there for this version and this pom (a changed pom resolves again).
# Resolves into a temporary folder and renames it, so an interrupted run never leaves a half-filled libs behind
# a valid stamp; one resolver at a time per HOME (parallel starts share the cache). Progress goes to stderr.
resolve_maven_libs() {
    local home="$1" pom="$2" property="$3" version="$4" main_jar="$5" what="$6"
    local libs="$home/libs" stamp="$home/libs.stamp" value tmp lockfd=""
    local repo="${LAMBENT_CACHE:-$HOME/.cache/lambent}/m2-repository"
    [[ -f "$pom" ]] || die "missing $pom"
    value="$main_jar $version pom-sha256 $(sha256sum "$pom" | cut -d' ' -f1)"
    _maven_libs_ready "$stamp" "$value" "$libs/$main_jar-$version.jar" && return 0
    mkdir -p "$home"
    if command -v flock >/dev/null 2>&1; then
        exec {lockfd}>"$home/.resolve.lock"
        flock "$lockfd"
        if _maven_libs_ready "$stamp" "$value" "$libs/$main_jar-$version.jar"; then
            exec {lockfd}>&-
            return 0
        fi
    fi
    ensure_maven
    log "resolving $what jars from Maven Central into $libs"
    log "(first run only: this downloads them, some 40 MB, and can take a minute or more)"
    tmp="$home/libs.tmp.$$"
    rm -rf "$tmp"
    # mvn -q -B still prints bare ANSI resets on stdout: strip them, and send
    # everything to stderr so that stdout stays clean for callers.
    if ! mvn -q -B -f "$pom" -Dmaven.repo.local="$repo" -D"$property=$version" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 | sed -u 's/\x1b\[[0-9;]*m//g' >&2; then
        rm -rf "$tmp"
        die "mvn could not resolve $what (see the output above)"
    fi
    [[ -f "$tmp/$main_jar-$version.jar" ]] || {
        rm -rf "$tmp"
        die "mvn finished but $tmp/$main_jar-$version.jar is missing"
    }
    rm -rf "$libs" "$stamp"
    mv "$tmp" "$libs"
    printf '%s\n' "$value" >"$stamp"
    log "resolved $(find "$libs" -name '*.jar' | wc -l) jars ($(du -sh "$libs" | cut -f1))"
    [[ -n "$lockfd" ]] && exec {lockfd}>&-
    return 0
}

# _maven_libs_ready STAMP VALUE JAR: the stamp says VALUE and the main jar is there.
_maven_libs_ready() {
    [[ -f "$1" && -f "$3" && "$(cat "$1")" == "$2" ]]
}

# ---------------------------------------------------------------- processes

# pid_in_file FILE: print the PID recorded in FILE, if it is a number.
pid_in_file() {
    local pid
    [[ -f "$1" ]] || return 1
    pid="$(tr -d '[:space:]' <"$1" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    printf '%s\n' "$pid"
}

# pid_alive PID: the process exists and isn't a zombie awaiting its reaper.
pid_alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    if [[ -r "/proc/$1/stat" ]]; then
        state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null)" || return 1
        [[ "$state" != Z && "$state" != X ]] || return 1
    fi
    return 0
}

# stop_pid PID WHAT [TIMEOUT]: SIGTERM, wait up to TIMEOUT seconds (default 20), then SIGKILL and wait 5 more.
stop_pid() {
    local pid="$1" what="$2" timeout="${3:-20}" deadline
    log "stopping $what (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while pid_alive "$pid" && ((SECONDS < deadline)); do
        sleep 0.1
    done
    if pid_alive "$pid"; then
        log "$what (pid $pid) still alive after ${timeout}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while pid_alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.1
        done
    fi
}

# ---------------------------------------------------------------- docker compose

# ensure_docker_compose: make sure a compose that reads docker-compose.yml is here, for the `docker compose config`
# check of tests/test_compose.py (which needs no Docker engine). Docker's compose v2 when there is one: the docker
# CLI's plugin, a docker-compose v2 on PATH, or the one built before into $LAMBENT_CACHE. Else, with
# LAMBENT_BUILD_COMPOSE=1 and Go, build that one from the Go module proxy (Docker's compose, pinned; the first build
# takes a couple of minutes and some 500 MB of module cache, too long for every CI run). Else, root with apt-get,
# Debian's docker-compose package: compose 1.29, older than the compose spec's `cgroup` key, which the test then
# leaves out of what it checks. Non-zero when none can be had.
ensure_docker_compose() {
    local version=v5.6.0 home src out
    home="${LAMBENT_CACHE:-$HOME/.cache/lambent}/compose-$version"
    if docker compose version >/dev/null 2>&1 || [[ -x "$home/docker-compose" ]]; then
        return 0
    fi
    if out="$(docker-compose version --short 2>/dev/null)" && [[ -n "$out" && "$out" != 1.* ]]; then
        return 0
    fi
    if [[ "${LAMBENT_BUILD_COMPOSE:-0}" == "1" ]] && command -v go >/dev/null 2>&1; then
        log "building Docker's compose $version with Go into $home (first run only: a couple of minutes)"
        if src="$(cd / && go mod download -json "github.com/docker/compose/v5@$version" \
                | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')" && [[ -d "$src" ]] && mkdir -p "$home" \
            && go -C "$src" build -ldflags "-X github.com/docker/compose/v5/internal.Version=$version" \
                -o "$home/docker-compose.tmp.$$" ./cmd >&2 \
            && mv -f "$home/docker-compose.tmp.$$" "$home/docker-compose"; then
            log "built $("$home/docker-compose" version)"
            return 0
        fi
        rm -f "$home/docker-compose.tmp.$$"
        log "warning: could not build Docker's compose $version (see above)"
    fi
    if command -v docker-compose >/dev/null 2>&1; then
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "error: no docker compose here; install Docker's compose plugin, or Go (to build it), or" \
            "Debian's docker-compose ('apt-get install docker-compose' as root) and retry"
        return 1
    fi
    log "no docker compose; installing Debian's docker-compose package (compose 1.29)"
    apt_install docker-compose || return 1
    hash -r
    if ! command -v docker-compose >/dev/null 2>&1; then
        log "error: docker-compose still not on PATH after installing the package"
        return 1
    fi
    log "installed $(docker-compose version --short)"
}
