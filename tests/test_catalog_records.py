"""The catalog's and the topics' records against real Redis, with no gateway: each record's encoding round-trips
and keeps the layout a running cluster has stored, and the Catalog's reads (code, code sizes, aliases) answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import orjson
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from runtime import keys
from runtime.functions.catalog import Catalog, Change, Version
from runtime.functions.spec import FunctionSpec
from runtime.topics.records import (Subscription, TopicRecord, read_subscription, read_subscriptions, read_topic,
                                    signing_key, stored_topics)

T = TypeVar("T")
SPEC = FunctionSpec.from_json({"handler": "handler.handler", "description": "first"})


def _with_catalog(redis_url: str, tmp_path: Path, body: Callable[[Catalog, AsyncRedis], Awaitable[T]]) -> T:
    """Run `body(catalog, its redis)` on a fresh Catalog (loaded, not listening) over the test's database."""
    async def run() -> T:
        connection = AsyncRedis.from_url(redis_url)
        try:
            catalog = Catalog(connection, data_dir=tmp_path)
            await catalog.reload()
            return await body(catalog, connection)
        finally:
            await connection.aclose()
    return asyncio.run(run())


def _change(blob: bytes, spec: FunctionSpec = SPEC) -> Callable[[Version | None], Change]:
    return lambda _current: Change(code_hash=f"hash-{blob.decode()}", spec=spec, zip_bytes=blob)


def test_a_version_record_round_trips_and_keeps_its_stored_field_names() -> None:
    version = Version(function="hello", number=3, code_hash="abc", spec=SPEC, created="2026-01-01T00:00:00.000+00:00",
                      revision=7)
    raw = version.to_redis()
    assert Version.from_redis(raw) == version
    assert orjson.loads(raw) == {"function": "hello", "version": 3, "code_hash": "abc", "spec": SPEC.to_json(),
                                 "created": "2026-01-01T00:00:00.000+00:00", "revision": 7}


def test_an_index_entry_written_as_a_numbered_version_reads_as_latest_with_that_revision() -> None:
    old = orjson.dumps({"function": "hello", "version": 4, "code_hash": "abc", "spec": SPEC.to_json(),
                        "created": "2026-01-01T00:00:00.000+00:00"})
    latest = Version.latest_from_redis(old)
    assert (latest.number, latest.revision, latest.is_latest, latest.code_hash) == (0, 4, True, "abc")


def test_writes_store_records_that_the_reads_give_back(redis_url: str, tmp_path: Path) -> None:
    async def body(catalog: Catalog, connection: AsyncRedis) -> None:
        # given a function written twice, published once in between
        await catalog.write("hello", _change(b"one"), publish=True)
        second = await catalog.write("hello", _change(b"two", SPEC.model_copy(update={"description": "second"})))
        # then the index holds $LATEST's record, the versions hash the published one
        raw = await connection.hget(keys.FUNCTIONS, "hello")
        assert raw is not None
        stored = Version.latest_from_redis(raw)
        assert stored == second.latest == catalog.latest("hello")
        assert (stored.revision, stored.code_hash, stored.spec.description) == (2, "hash-two", "second")
        [published] = await catalog.list_versions("hello")
        assert (published.number, published.code_hash, published.spec.description) == (1, "hash-one", "first")
        assert await catalog.version("hello", 1) == published
    _with_catalog(redis_url, tmp_path, body)


def test_code_zip_gives_the_stored_blob_and_none_for_a_hash_not_stored(redis_url: str, tmp_path: Path) -> None:
    async def body(catalog: Catalog, _connection: AsyncRedis) -> tuple[bytes | None, bytes | None]:
        await catalog.write("hello", _change(b"one"))
        return await catalog.code_zip("hash-one"), await catalog.code_zip("hash-none")
    assert _with_catalog(redis_url, tmp_path, body) == (b"one", None)


def test_code_sizes_of_several_hashes_leave_out_those_not_stored_and_are_kept(redis_url: str, tmp_path: Path) -> None:
    async def body(catalog: Catalog, connection: AsyncRedis) -> list[dict[str, int]]:
        await catalog.write("a", _change(b"x" * 10))
        await catalog.write("b", _change(b"y" * 3))
        first = await catalog.code_sizes(["hash-" + "x" * 10, "hash-" + "y" * 3, "hash-none"])
        # code is stored by content: a size once read is not read again (even if the blob went meanwhile)
        await connection.delete(keys.code("hash-" + "y" * 3))
        again = await catalog.code_sizes(["hash-" + "y" * 3])
        return [first, again]
    first, again = _with_catalog(redis_url, tmp_path, body)
    assert first == {"hash-" + "x" * 10: 10, "hash-" + "y" * 3: 3}
    assert again == {"hash-" + "y" * 3: 3}


def test_described_aliases_give_each_alias_its_version_and_description(redis_url: str, tmp_path: Path) -> None:
    async def body(catalog: Catalog, _connection: AsyncRedis) -> dict[str, Any]:
        await catalog.write("hello", _change(b"one"), publish=True)
        await catalog.set_alias("hello", "live", 1, description="the live one")
        await catalog.set_alias("hello", "edge", 0)
        before = await catalog.described_aliases("hello")
        await catalog.set_alias("hello", "live", 1, description="")       # "" removes the description
        return {"before": before, "after": await catalog.described_aliases("hello")}
    found = _with_catalog(redis_url, tmp_path, body)
    assert {name: (alias.number, alias.description) for name, alias in found["before"].items()} == {
        "live": (1, "the live one"), "edge": (0, "")}
    assert found["after"]["live"].description == ""


@pytest.fixture
def blocking(redis_url: str) -> Any:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def test_a_topic_record_round_trips_in_the_stored_layout(blocking: redis.Redis) -> None:
    record = TopicRecord(attributes={"DisplayName": "Orders"}, tags={"team": "a"}, created_ms=12)
    assert orjson.loads(record.to_redis()) == {"attributes": {"DisplayName": "Orders"}, "tags": {"team": "a"},
                                               "created_ms": 12}
    blocking.hset(keys.TOPICS, "orders", record.to_redis())
    assert read_topic(blocking, "orders") == record
    assert read_topic(blocking, "other") is None
    assert stored_topics(blocking) == {"orders"}


def test_a_subscription_round_trips_and_reads_by_topic_and_id(blocking: redis.Redis) -> None:
    sub = Subscription(id="s1", topic="orders", function="hello", qualifier="live", filter_policy='{"a":["b"]}',
                       filter_policy_scope="MessageBody")
    assert orjson.loads(sub.to_redis()) == {"function": "hello", "qualifier": "live", "filter_policy": '{"a":["b"]}',
                                            "filter_policy_scope": "MessageBody"}
    blocking.hset(keys.topic_subscriptions("orders"), "s1", sub.to_redis())
    blocking.hset(keys.topic_subscriptions("orders"), "s2", orjson.dumps({"function": "other"}))   # defaults
    assert read_subscription(blocking, "orders", "s1") == sub
    assert read_subscription(blocking, "orders", "s3") is None
    assert sorted(read_subscriptions(blocking, "orders"), key=lambda s: s.id) == [
        sub, Subscription(id="s2", topic="orders", function="other")]


def test_the_signing_key_is_made_once_and_the_same_for_every_reader(blocking: redis.Redis, redis_url: str) -> None:
    first = signing_key(blocking)
    other = redis.Redis.from_url(redis_url)
    try:
        assert signing_key(other) == first
    finally:
        other.close()
    assert len(first) == 64 and blocking.get(keys.TOPICS_SIGNING_KEY) == first


def test_a_catalog_stopped_right_after_it_started_stops(redis_url: str, tmp_path: Path) -> None:
    """redis-py can swallow the first cancel of a listener that has just subscribed; stop() must still end."""
    async def run() -> list[int]:
        connection = AsyncRedis.from_url(redis_url)
        hung = []
        try:
            for attempt in range(10):
                catalog = Catalog(connection, data_dir=tmp_path)
                await catalog.start()
                stopping = asyncio.ensure_future(catalog.stop())
                done, _ = await asyncio.wait({stopping}, timeout=5)
                if not done:
                    hung.append(attempt)
                    for task in catalog._tasks:
                        task.cancel()
                    await stopping
        finally:
            await connection.aclose()
        return hung
    assert asyncio.run(run()) == []


def test_a_function_another_node_writes_just_after_a_reload_here_is_found_at_once(redis_url: str,
                                                                                   tmp_path: Path) -> None:
    async def body(catalog: Catalog, connection: AsyncRedis) -> str:
        other = Catalog(connection, data_dir=tmp_path / "other")      # another node, on the same Redis
        await other.reload()
        await catalog.reload()                                        # here: a reload moments ago
        await other.write("hello", _change(b"one"), publish=True)
        target = await catalog.resolve("hello", "1")                  # no 404 while the news is on its way
        return target.version.code_hash
    assert _with_catalog(redis_url, tmp_path, body) == "hash-one"
