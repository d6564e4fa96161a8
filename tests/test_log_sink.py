"""Captured invocation logs on their way to Redis (observability/logs.py): stored per function in order, capped,
and a buffer that drops past its size and says so, against a real Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from runtime.observability.logs import LogSink, read_logs


async def _stored(redis: Redis, function: str, newest: str, deadline_s: float = 10.0) -> list[dict[str, Any]]:
    """The function's stored records, oldest first, once the newest is request `newest` (the sink writes in
    batches: until the last one, what is stored is not yet what will be)."""
    deadline = time.monotonic() + deadline_s
    while True:
        records = await read_logs(redis, function, limit=1000)
        if records and records[-1]["requestId"] == newest:
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{function}'s record {newest} not stored within {deadline_s} s: {records}")
        await asyncio.sleep(0.02)


def test_each_functions_records_are_stored_oldest_first_and_capped(redis_url: str) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        redis = Redis.from_url(redis_url)
        sink = LogSink(redis, keep_per_function=5, max_batch=3, linger_s=0.01)
        sink.start()
        try:
            # when two functions' invocations are recorded, interleaved, more than a batch and the cap of one
            for index in range(8):
                sink.record(function="a", version="$LATEST", request_id=f"a-{index}", text=f"line a{index}\n")
                if index < 2:
                    sink.record(function="b", version="3", request_id=f"b-{index}", text=f"line b{index}\n")
            return await _stored(redis, "a", "a-7"), await _stored(redis, "b", "b-1")
        finally:
            await sink.stop()
            await redis.aclose()

    a, b = asyncio.run(scenario())
    # then each function keeps its newest records, oldest first, with what was recorded
    assert [record["requestId"] for record in a] == ["a-3", "a-4", "a-5", "a-6", "a-7"]
    assert [(record["requestId"], record["version"], record["text"]) for record in b] == [
        ("b-0", "3", "line b0\n"), ("b-1", "3", "line b1\n")]
    assert all(record["function"] == "a" and record["time"] > 0 for record in a)


def test_records_past_the_buffer_are_dropped_counted_and_told(redis_url: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], int]:
        redis = Redis.from_url(redis_url)
        # given a sink whose writer has not run yet (as while Redis is away), with room for three records
        sink = LogSink(redis, keep_per_function=100, buffer=3, linger_s=0.01)
        for index in range(5):
            sink.record(function="f", version="$LATEST", request_id=f"r-{index}", text="")
        sink.start()
        try:
            stored = await _stored(redis, "f", "r-2")
            deadline = time.monotonic() + 10
            while not any("dropped" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return stored, sink.dropped
        finally:
            await sink.stop()
            await redis.aclose()

    with caplog.at_level(logging.WARNING, logger="runtime.observability.logs"):
        stored, dropped = asyncio.run(scenario())
    # then the first three are stored, the other two counted, and the server log says how many and the size
    assert [record["requestId"] for record in stored] == ["r-0", "r-1", "r-2"] and dropped == 2
    [told] = [record for record in caplog.records if "dropped" in record.getMessage()]
    assert told.getMessage() == ("2 invocation logs were dropped while Redis was behind or down: "
                                 "the buffer holds 3")


def test_what_waits_at_stop_is_stored(redis_url: str) -> None:
    async def scenario() -> list[dict[str, Any]]:
        redis = Redis.from_url(redis_url)
        sink = LogSink(redis, keep_per_function=100, linger_s=60.0)      # its writer would wait a minute
        sink.start()
        try:
            for index in range(4):
                sink.record(function="f", version="$LATEST", request_id=f"r-{index}", text="")
        finally:
            await sink.stop()
        try:
            return await read_logs(redis, "f")
        finally:
            await redis.aclose()

    assert [record["requestId"] for record in asyncio.run(scenario())] == ["r-0", "r-1", "r-2", "r-3"]
