#!/usr/bin/env bash
# Run the test suite against a private, throwaway Redis.
#
#   scripts/test.sh [PYTEST ARGS...]
#
# Ensures .venv (scripts/venv.sh), runs ruff and mypy (scripts/lint.sh; LINT=0 skips them), starts Redis
# with its state in .state/test-redis, Kafka in .state/test-kafka and ElasticMQ in .state/test-elasticmq, exports
# LAMBENT_TEST_REDIS_URL, LAMBENT_TEST_KAFKA_{BOOTSTRAP,PASSWORD,STATE} and LAMBENT_TEST_SQS_{ENDPOINT,SECRET,STATE},
# runs .venv/bin/pytest from the repository root (on TEST_WORKERS workers, default 2), and always stops those
# servers on exit. The exit status is pytest's; "no tests collected" (pytest exit code 5) is a failure.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$LAMBENT_ROOT"
STATE_DIR="$LAMBENT_ROOT/.state/test-redis"
KAFKA_DIR="$LAMBENT_ROOT/.state/test-kafka"
ELASTICMQ_DIR="$LAMBENT_ROOT/.state/test-elasticmq"
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

# The test files run on TEST_WORKERS pytest-xdist workers (default 2), each file whole on one worker (its module
# fixtures, its servers): most tests wait on real processes, so two workers take half the time even on two
# CPUs. TEST_WORKERS=1 runs them one after another in this process (as plain `.venv/bin/pytest` does).
workers="${TEST_WORKERS:-2}"
if ! [[ "$workers" =~ ^[1-9][0-9]*$ ]] || (( workers > 15 )); then
    # (each worker's gateways need databases of the test Redis of their own: it has 15 besides database 0)
    log "error: TEST_WORKERS must be a whole number from 1 to 15, not '$workers'"
    exit 2
fi
parallel=()
if (( workers > 1 )); then
    parallel=(-n "$workers" --dist loadfile)
fi

scripts/venv.sh

# Lint and type checks first (seconds, scripts/lint.sh): a finding fails the run before any server starts.
# LINT=0 skips them, for a quick local rerun of a few tests; CI never sets it.
if [[ "${LINT:-1}" != 0 ]]; then
    scripts/lint.sh
fi

# The jail's tools: tests/test_jail.py runs real jails (`sandbox.isolation: jail`), and fails without them.
ensure_jail_tools || log "warning: the jail's tools are missing: tests/test_jail.py will fail"

# A headless browser for tests/test_console.py (the web console); without one that test fails and says why.
ensure_chromium || log "warning: no chromium/chromedriver: tests/test_console.py will fail"

# strace for tests/test_sandbox_process.py, which counts the event loop's close() calls of a sandbox's pipes.
ensure_strace || log "warning: no strace: tests/test_sandbox_process.py's descriptor check fails"

# A compose for tests/test_compose.py's `docker compose config` check of docker-compose.yml (no engine needed).
ensure_docker_compose || log "warning: no docker compose: tests/test_compose.py's config check fails in CI"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    scripts/elasticmq.sh stop "$ELASTICMQ_DIR" || true
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

# A real ElasticMQ (SQS API) for the sqs event source's tests, fresh each run too (its H2 store keeps
# queues and messages across restarts, which the tests of a restart rely on within one run). It sits
# behind its guard, which forwards only requests signed as `lambent` with the secret elasticmq.sh
# generated: every SQS client a test makes signs with LAMBENT_TEST_SQS_SECRET (tests/sqs_client.py).
scripts/elasticmq.sh stop "$ELASTICMQ_DIR"
rm -rf "$ELASTICMQ_DIR"
LAMBENT_TEST_SQS_ENDPOINT="$(LAMBENT_PYTHON="$LAMBENT_ROOT/.venv/bin/python" scripts/elasticmq.sh start "$ELASTICMQ_DIR")"
LAMBENT_TEST_SQS_SECRET="$(scripts/elasticmq.sh secret "$ELASTICMQ_DIR")"
LAMBENT_TEST_SQS_STATE="$ELASTICMQ_DIR"   # for tests that stop and start it (tests/sqs_client.py ElasticMQ)
export LAMBENT_TEST_SQS_ENDPOINT LAMBENT_TEST_SQS_SECRET LAMBENT_TEST_SQS_STATE
log "LAMBENT_TEST_SQS_ENDPOINT=$LAMBENT_TEST_SQS_ENDPOINT (behind its guard: SigV4 as lambent)"

rc=0
.venv/bin/pytest "${parallel[@]}" "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    log "error: pytest collected no tests (exit code 5); treating this as a failure"
fi
exit "$rc"
