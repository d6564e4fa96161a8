#!/usr/bin/env bash
# Run the test suite against a private, throwaway Redis.
#
#   scripts/test.sh [PYTEST ARGS...]
#
# Ensures .venv (scripts/venv.sh), starts Redis with its state in
# .state/test-redis and Kafka in .state/test-kafka, exports LAMBENT_TEST_REDIS_URL and
# LAMBENT_TEST_KAFKA_{BOOTSTRAP,PASSWORD,STATE}, runs .venv/bin/pytest
# from the repository root, and always stops that Redis on exit. The exit
# status is pytest's; "no tests collected" (pytest exit code 5) is a failure.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$LAMBENT_ROOT"
STATE_DIR="$LAMBENT_ROOT/.state/test-redis"
KAFKA_DIR="$LAMBENT_ROOT/.state/test-kafka"
mkdir -p "$STATE_DIR"

# One test run at a time per checkout: runs share .state/test-redis, and one
# run's cleanup would otherwise stop the Redis another run is using.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$LAMBENT_ROOT/.state/test.lock"
    if ! flock -n 9; then
        log "another scripts/test.sh is running in this checkout; waiting for it"
        flock 9
    fi
fi

scripts/venv.sh

# The jail's tools: tests/test_jail.py runs real jails (`sandbox.isolation: jail`), and fails without them.
ensure_jail_tools || log "warning: the jail's tools are missing: tests/test_jail.py will fail"

# A headless browser for tests/test_console.py (the web console); without one that test fails and says why.
ensure_chromium || log "warning: no chromium/chromedriver: tests/test_console.py will fail"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    scripts/kafka.sh stop "$KAFKA_DIR" || true
    scripts/redis.sh stop "$STATE_DIR" || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Anything still in the state dir is a leftover of a run that was killed
# before its cleanup ran; start from an empty server.
scripts/redis.sh stop "$STATE_DIR"
LAMBENT_TEST_REDIS_URL="$(scripts/redis.sh start "$STATE_DIR")"
export LAMBENT_TEST_REDIS_URL
log "LAMBENT_TEST_REDIS_URL=$(mask_url "$LAMBENT_TEST_REDIS_URL")"

# A real Kafka broker for the stream tests, fresh each run (topics and offsets from an earlier
# run would leak into this one). The jars are cached after the first run. It requires SASL PLAIN
# as `lambent` with the password kafka.sh generated: every Kafka client a test makes passes
# LAMBENT_TEST_KAFKA_PASSWORD (tests/kafka_client.py). LAMBENT_TEST_KAFKA_STATE is its state dir
# (server.properties names the controller listener, which refuses clients without it too).
scripts/kafka.sh stop "$KAFKA_DIR"
rm -rf "$KAFKA_DIR"
LAMBENT_TEST_KAFKA_BOOTSTRAP="$(LAMBENT_PYTHON="$LAMBENT_ROOT/.venv/bin/python" scripts/kafka.sh start "$KAFKA_DIR")"
LAMBENT_TEST_KAFKA_PASSWORD="$(scripts/kafka.sh password "$KAFKA_DIR")"
LAMBENT_TEST_KAFKA_STATE="$KAFKA_DIR"
export LAMBENT_TEST_KAFKA_BOOTSTRAP LAMBENT_TEST_KAFKA_PASSWORD LAMBENT_TEST_KAFKA_STATE
log "LAMBENT_TEST_KAFKA_BOOTSTRAP=$LAMBENT_TEST_KAFKA_BOOTSTRAP (SASL PLAIN as lambent)"

rc=0
.venv/bin/pytest "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    log "error: pytest collected no tests (exit code 5); treating this as a failure"
fi
exit "$rc"
