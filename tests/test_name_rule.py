"""One function-name rule: the catalog, split_name and the gateway's routes refuse a bad name in the same words."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from fastapi import Request
from redis.asyncio import Redis

from runtime.functions.catalog import Catalog, split_name
from runtime.functions.spec import NAME_RE, name_problem
from runtime.gateway.common import bad_name

BAD = ["../etc", "a" * 65, "bad name", "", "héllo"]


@pytest.mark.parametrize("name", BAD)
def test_a_bad_name_is_said_in_one_message_everywhere(name: str, redis_url: str, tmp_path: Path) -> None:
    message = name_problem(name)
    assert message == f"'{name}' is not a valid function name: use 1-64 letters, digits, '-' or '_'"
    with pytest.raises(ValueError) as split:
        split_name(name)
    assert str(split.value) == message

    async def write() -> None:
        redis = Redis.from_url(redis_url)
        try:
            await Catalog(redis, data_dir=tmp_path).write(name, lambda _current: pytest.fail("not refused first"))
        finally:
            await redis.aclose()
    with pytest.raises(ValueError) as written:
        asyncio.run(write())
    assert str(written.value) == message

    request = Request({"type": "http", "state": {"request_id": "r1"}, "headers": [],
                       "app": SimpleNamespace(state=SimpleNamespace())})
    answer = bad_name(request, name)
    assert answer is not None and answer.status_code == 400
    assert orjson.loads(bytes(answer.body)) == {"error": "InvalidFunctionName", "message": message, "requestId": "r1"}


@pytest.mark.parametrize("name", ["hello", "a" * 64, "my-fn_2"])
def test_a_good_name_has_no_problem(name: str) -> None:
    assert NAME_RE.match(name) and name_problem(name) is None
    request = Request({"type": "http", "state": {"request_id": "r1"}, "headers": []})
    assert bad_name(request, name) is None
