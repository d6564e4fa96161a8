"""Every Redis key and channel Lambent uses, in one place (arq's constants.py, rq's defaults.py)."""

PREFIX = "lambent:"

# Hash: function name -> JSON of its $LATEST record (the catalog's index): what a deploy or an API update writes.
FUNCTIONS = PREFIX + "functions"
# Counter bumped on every catalog change; nodes compare it to know their cache is stale.
CATALOG_GENERATION = PREFIX + "catalog:generation"
# Pub/sub channel: a function name is published when its versions or aliases change.
CATALOG_CHANNEL = PREFIX + "catalog:changes"


def versions(name: str) -> str:
    """Hash: published version number -> JSON version record (immutable once written)."""
    return f"{PREFIX}fn:{name}:versions"


def version_seq(name: str) -> str:
    """Counter: the last version number published of this function."""
    return f"{PREFIX}fn:{name}:seq"


def tags(name: str) -> str:
    """Hash: tag key -> value; the function's own tags (TagResource), in no version."""
    return f"{PREFIX}fn:{name}:tags"


def aliases(name: str) -> str:
    """Hash: alias name -> published version number (0: $LATEST)."""
    return f"{PREFIX}fn:{name}:aliases"


def alias_descriptions(name: str) -> str:
    """Hash: alias name -> its description (CreateAlias / UpdateAlias), absent when it has none."""
    return f"{PREFIX}fn:{name}:alias-descriptions"


def code(code_hash: str) -> str:
    """String: the zip of one function version's folder, stored once by its sha256."""
    return f"{PREFIX}code:{code_hash}"


def concurrency(name: str) -> str:
    """Sorted set: lease id -> expiry (ms); one member per execution in flight, cluster-wide."""
    return f"{PREFIX}fn:{name}:concurrency"


def logs(name: str) -> str:
    """List: captured invocation logs of one function, newest first, capped."""
    return f"{PREFIX}fn:{name}:logs"


def deploy_lock(name: str) -> str:
    """String: held while a version of this function is being written."""
    return f"{PREFIX}fn:{name}:deploy-lock"


# -- asynchronous invocation -----------------------------------------------------------------

# Sorted set: request id -> time (ms) its next attempt is due; moved onto the RQ queue when due.
ASYNC_DELAYED = PREFIX + "async:delayed"
# Sorted set: request id -> lease expiry (ms). A running invocation renews its lease; a queued one is
# checked at expiry. An expired lease means a lost worker or a lost job, and the invocation is re-run.
ASYNC_LEASES = PREFIX + "async:leases"


def invocation(request_id: str) -> str:
    """Hash: one async invocation's record; its fields are asyncq.record.InvocationRecord's."""
    return f"{PREFIX}inv:{request_id}"


def dlq(name: str) -> str:
    """Hash: request id -> dead letter, JSON (asyncq.record.DeadLetter: Lambda's destination record, the attempts)."""
    return f"{PREFIX}fn:{name}:dlq"


def dlq_index(name: str) -> str:
    """Sorted set: request id -> time (ms) it was dead-lettered; orders and pages the DLQ."""
    return f"{PREFIX}fn:{name}:dlq:index"


# -- streams -------------------------------------------------------------------------------------


def stream_state(function: str, mapping: int) -> str:
    """Hash: "topic-partition" -> JSON state (owner, committed offset, lag, last poll) of one mapping; written and
    read through streams/partition_state.py only."""
    return f"{PREFIX}fn:{function}:streams:{mapping}"


def stream_group(function: str, mapping: int, topic: str) -> str:
    """The Kafka consumer group derived from a `kafka` event's place (not a Redis key); KafkaEvent.group says
    which group an event uses (its `consumer_group` when set)."""
    return f"lambent-{function}-{mapping}-{topic}"


def sqs_state(function: str, queue: str) -> str:
    """Hash: the state of the function's `sqs` mapping of queue (name) `queue`: counters (received, deleted,
    failed, ...), each poller process's heartbeat and messages in flight, the last result. Keyed by the queue, which
    names the mapping while it lives (a function maps a queue once), not by its place in `events`. Written and read
    through streams/sqs_state.py only."""
    return f"{PREFIX}fn:{function}:sqs:{queue}"


def sqs_slots(function: str, queue: str) -> str:
    """Sorted set: slot lease id -> expiry (ms); one member per batch of this `sqs` mapping being polled or run,
    cluster-wide, at most its maximum_concurrency."""
    return f"{PREFIX}fn:{function}:sqs:{queue}:slots"


# -- topics (SNS) --------------------------------------------------------------------------------

# Hash: topic name -> JSON of its attributes (DisplayName, tags, ...): the topics made with CreateTopic.
TOPICS = PREFIX + "topics"


def topic_subscriptions(topic: str) -> str:
    """Hash: subscription id -> JSON subscription (endpoint function, qualifier, filter policy and scope)."""
    return f"{PREFIX}topic:{topic}:subscriptions"


# String: the secret (made once, SET NX, by whichever role publishes first) that signs the aws:sns events'
# Signature (an HMAC: Lambent has no certificate to sign with; see events/sns.py).
TOPICS_SIGNING_KEY = PREFIX + "topics:signing-key"


# -- schedules -----------------------------------------------------------------------------------
# Read and written only through runtime/scheduler/state.py, which alone knows their fields.


def schedule_fired(function: str, index: int, epoch_s: int) -> str:
    """String: taken (SET in a transaction with the enqueue) by the one replica that fires this occurrence."""
    return f"{PREFIX}fn:{function}:schedule:{index}:fired:{epoch_s}"


def schedule_last(function: str, index: int) -> str:
    """Hash: the last fire of a schedule (scheduled time, request id, when, how late, by whom)."""
    return f"{PREFIX}fn:{function}:schedule:{index}:last"


def schedule_stats(function: str, index: int) -> str:
    """Hash: counters of a schedule: fired, late (fired after its time, within the grace), missed."""
    return f"{PREFIX}fn:{function}:schedule:{index}:stats"


# -- operations ----------------------------------------------------------------------------------


def minute_stats(function: str, minute: int) -> str:
    """Hash: one function's counts in one minute (invocations, errors, throttles, duration buckets); 2 h TTL."""
    return f"{PREFIX}fn:{function}:stats:{minute}"
