"""`lambent worker`'s RQ side (runtime/asyncq/rqworker.py) against plain RQ, on real Redis: what a job's
success leaves in Redis is what RQ's SimpleWorker leaves, in fewer round trips, and a job with dependents still
releases them."""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from runtime.asyncq.rqworker import Worker, stop_without_waiting
from runtime.asyncq.shutdown import Shutdown
from runtime.redis_retry import outage_for

from .helpers import fresh_redis_url

JOBS = 20


class CountingConnection(redis.Connection):
    """A real connection that counts its round trips (each packed send: one command or a whole pipeline)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted(redis_url: str) -> Iterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    yield client
    client.close()
    pool.disconnect()


def enqueue(connection: redis.Redis, queue: Queue, count: int) -> list[str]:
    """`count` jobs with the options of Lambent's own (store.py: JSON, no timeout, no result kept)."""
    return [queue.enqueue("builtins.len", args=([1, 2],), result_ttl=0, failure_ttl=86400, job_timeout=-1).id
            for _ in range(count)]


def run_lambent_worker(connection: redis.Redis, url: str, queue: Queue, name: str) -> None:
    """Lambent's worker in burst mode; its pubsub thread (told to stop, not waited for, by the worker, whose
    process then ends) is unsubscribed and waited for here, before the test closes the connection under it."""
    worker = Worker([queue], connection=connection, serializer=JSONSerializer, name=name, outage=outage_for(url),
                    shutdown=Shutdown(5.0))
    try:
        worker.work(burst=True)
    finally:
        if worker.pubsub_thread is not None:
            worker.pubsub.unsubscribe()          # its answer ends the thread's read; then it sees the stop
            worker.pubsub_thread.join(10.0)
            assert not worker.pubsub_thread.is_alive()
            worker.pubsub.close()


class PlainWorker(SimpleWorker):
    """RQ's SimpleWorker, whose pubsub thread is told to stop before RQ's UNSUBSCRIBE ends its read. RQ 3.0 tells
    it after, and under redis-py 8.2, whose stop() waits for the thread, a thread that has read the answer by
    then waits for a new subscription: 60 s (RQ's sleep time) at the end of every run. Nothing else differs."""

    def unsubscribe(self) -> None:
        if self.pubsub_thread is not None:
            stop_without_waiting(self.pubsub_thread)
        super().unsubscribe()


def keyspace(connection: redis.Redis, job_ids: list[str], worker: str) -> dict[str, str]:
    """Every key with its type, job ids and the worker's name replaced by placeholders."""
    pattern = re.compile("|".join(map(re.escape, job_ids + [worker])))
    found = {}
    for key in connection.scan_iter(count=1000):
        name = pattern.sub(lambda m: "WORKER" if m.group(0) == worker else "JOB", key.decode())
        kind = connection.type(key)
        found[name] = kind.decode() if isinstance(kind, bytes) else kind
    return found


def test_a_success_leaves_what_rq_leaves_in_fewer_round_trips(counted: redis.Redis, redis_url: str,
                                                              redis_base_url: str) -> None:
    plain = redis.Redis.from_url(fresh_redis_url(redis_base_url))
    try:
        rq_queue = Queue("jobs", connection=plain, serializer=JSONSerializer)
        rq_ids = enqueue(plain, rq_queue, JOBS)
        PlainWorker([rq_queue], connection=plain, serializer=JSONSerializer, name="w-rq").work(
            burst=True, logging_level="WARNING", with_scheduler=False)
        expected = keyspace(plain, rq_ids, "w-rq")
        rq_stats = plain.hmget("rq:worker:w-rq", "successful_job_count", "failed_job_count")
    finally:
        plain.close()

    queue = Queue("jobs", connection=counted, serializer=JSONSerializer)
    ids = enqueue(counted, queue, JOBS)
    before = CountingConnection.sends
    run_lambent_worker(counted, redis_url, queue, "w-lambent")
    lambent_sends = CountingConnection.sends - before

    assert keyspace(counted, ids, "w-lambent") == expected
    assert counted.hmget("rq:worker:w-lambent", "successful_job_count", "failed_job_count") == rq_stats
    assert rq_stats[0] == str(JOBS).encode()
    assert not any(Job.exists(job_id, connection=counted) for job_id in ids)
    assert counted.zcard(queue.started_job_registry.key) == 0

    # The same jobs once more, counted on RQ's own worker class over the counting connection.
    rq_ids = enqueue(counted, queue, JOBS)
    before = CountingConnection.sends
    PlainWorker([queue], connection=counted, serializer=JSONSerializer, name="w-rq-counted").work(
        burst=True, logging_level="WARNING", with_scheduler=False)
    rq_sends = CountingConnection.sends - before
    assert not any(Job.exists(job_id, connection=counted) for job_id in rq_ids)
    # Per job, RQ's success path is eight round trips and its heartbeats and idle states ten; Lambent's are
    # one, and a heartbeat at most once a second (about 30 against 10 here; without the one-step success, 20).
    assert lambent_sends / JOBS <= rq_sends / JOBS - 15, (lambent_sends, rq_sends)


def test_a_job_with_dependents_releases_them_through_rqs_own_path(counted: redis.Redis, redis_url: str) -> None:
    queue = Queue("jobs", connection=counted, serializer=JSONSerializer)
    first = queue.enqueue("builtins.len", args=([1],), result_ttl=0, failure_ttl=86400, job_timeout=-1)
    second = queue.enqueue("builtins.len", args=([1, 2, 3],), depends_on=first, result_ttl=600, job_timeout=-1)
    assert second.get_status() == JobStatus.DEFERRED

    run_lambent_worker(counted, redis_url, queue, "w-deps")

    assert not Job.exists(first.id, connection=counted)
    done = Job.fetch(second.id, connection=counted, serializer=JSONSerializer)
    assert done.get_status() == JobStatus.FINISHED
    assert done.return_value() == 3
    assert counted.hget("rq:worker:w-deps", "successful_job_count") == b"2"
