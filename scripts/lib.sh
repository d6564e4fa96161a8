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
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        redis-server >&2 || return 1
    hash -r
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        log "error: redis-server/redis-cli still not on PATH after installing the package"
        return 1
    fi
    log "installed $(redis-server --version | head -n1)"
}
