#!/usr/bin/env bash
# Run every Lambent role on this machine: `make up` calls this after installing Redis and the venv.
#
#   scripts/up.sh [lambent up options...]
#
# Starts a local Kafka (scripts/kafka.sh, state in .state/kafka; SASL, its password passed to the roles
# in LAMBENT_KAFKA_SASL__PASSWORD) for the streams role unless LAMBENT_KAFKA_BOOTSTRAP_SERVERS names
# one already or KAFKA=0, and a local ElasticMQ (scripts/elasticmq.sh, state in .state/elasticmq: an
# SQS-compatible server for `sqs` events behind its guard, passed to the roles in LAMBENT_SQS__ENDPOINT_URL
# with its login in LAMBENT_SQS__ACCESS_KEY_ID / LAMBENT_SQS__SECRET_ACCESS_KEY) unless
# LAMBENT_SQS__ENDPOINT_URL names one already or SQS=0; `lambent up` starts Redis itself
# when none answers. Ctrl-C stops every role, then the Kafka and ElasticMQ this script started.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$LAMBENT_ROOT"

KAFKA_DIR="$LAMBENT_ROOT/.state/kafka"
ELASTICMQ_DIR="$LAMBENT_ROOT/.state/elasticmq"
started_kafka=0
started_elasticmq=0
cleanup() {
    if [[ $started_elasticmq -eq 1 ]]; then
        scripts/elasticmq.sh stop "$ELASTICMQ_DIR" || true
    fi
    if [[ $started_kafka -eq 1 ]]; then
        scripts/kafka.sh stop "$KAFKA_DIR" || true
    fi
}
trap cleanup EXIT

if [[ -z "${LAMBENT_KAFKA_BOOTSTRAP_SERVERS:-}" && "${KAFKA:-1}" != "0" ]]; then
    log "starting a local Kafka for the streams role (the first run downloads it; KAFKA=0 skips it)"
    LAMBENT_KAFKA_BOOTSTRAP_SERVERS="$(LAMBENT_PYTHON="$LAMBENT_ROOT/.venv/bin/python" scripts/kafka.sh start "$KAFKA_DIR")"
    started_kafka=1
    # It requires SASL PLAIN as `lambent` (functions share the host's network): the roles log in with
    # the password it generated (kept in $KAFKA_DIR/kafka.password, mode 0600), as they take Redis's
    # password in LAMBENT_REDIS_URL.
    LAMBENT_KAFKA_SASL__PASSWORD="$(scripts/kafka.sh password "$KAFKA_DIR")"
    LAMBENT_KAFKA_SASL__MECHANISM=PLAIN
    LAMBENT_KAFKA_SASL__USERNAME=lambent
    export LAMBENT_KAFKA_BOOTSTRAP_SERVERS LAMBENT_KAFKA_SASL__PASSWORD LAMBENT_KAFKA_SASL__MECHANISM \
        LAMBENT_KAFKA_SASL__USERNAME
fi

if [[ -z "${LAMBENT_SQS__ENDPOINT_URL:-}" && "${SQS:-1}" != "0" ]]; then
    log "starting a local ElasticMQ for sqs events (the first run downloads it; SQS=0 skips it)"
    # Its queues and messages are kept in .state/elasticmq across runs, at the same URL while its port is free.
    LAMBENT_SQS__ENDPOINT_URL="$(LAMBENT_PYTHON="$LAMBENT_ROOT/.venv/bin/python" scripts/elasticmq.sh start "$ELASTICMQ_DIR")"
    started_elasticmq=1
    # It sits behind its guard (functions share the host's network, and ElasticMQ checks no credentials): the
    # roles sign as `lambent` with the secret it generated (kept in $ELASTICMQ_DIR/sqs.secret, mode 0600).
    LAMBENT_SQS__ACCESS_KEY_ID=lambent
    LAMBENT_SQS__SECRET_ACCESS_KEY="$(scripts/elasticmq.sh secret "$ELASTICMQ_DIR")"
    export LAMBENT_SQS__ENDPOINT_URL LAMBENT_SQS__ACCESS_KEY_ID LAMBENT_SQS__SECRET_ACCESS_KEY
fi

rc=0
.venv/bin/lambent up "$@" || rc=$?
exit "$rc"
