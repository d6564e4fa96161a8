"""The role wiring (runtime/wiring/services.py) and the one deploy pipeline (runtime/wiring/deploy.py), in process:
real Redis, a fake trial sandbox in place of the executor. Seconds, no gateway."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from redis.asyncio import Redis

from runtime import keys
from runtime.config import Config
from runtime.functions.catalog import Catalog
from runtime.functions.deps import DepsError
from runtime.functions.package import CodeError, Package, pack_folder
from runtime.wiring import Base, GatewayServices
from runtime.wiring import deploy as pipeline

from .helpers import TEST_FUNCTIONS

IMPORT_ERROR = {"errorType": "Runtime.ImportModuleError", "errorMessage": "No module named 'missing'",
                "logs": "init log line\n"}


class FakeTrial:
    """The executor's trial_init as scripted per function name: None (imports), an init error, or an exception."""

    def __init__(self, answers: dict[str, dict[str, Any] | Exception] | None = None) -> None:
        self.answers = answers or {}
        self.tried: list[str] = []

    async def trial_init(self, name: str, package: Package) -> dict[str, Any] | None:
        self.tried.append(name)
        answer = self.answers.get(name)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _config(tmp_path: Path, redis_url: str, **more: Any) -> Config:
    return Config.model_validate({"redis_url": redis_url, "data_dir": str(tmp_path / "data"),
                                  "functions_dir": str(tmp_path / "functions"), "sandbox": {"isolation": "none"},
                                  **more})


async def _stop(*started: Base) -> None:
    """Stop what a test started, once every catalog listens: redis-py 8.1 can swallow the cancellation of a
    listener still subscribing, and its stop() would hang."""
    deadline = time.monotonic() + 5
    while (await started[0].redis.pubsub_numsub(keys.CATALOG_CHANNEL))[0][1] < len(started):
        assert time.monotonic() < deadline, "the catalogs never subscribed"
        await asyncio.sleep(0.01)
    for services in started:
        await services.stop()


@contextlib.asynccontextmanager
async def _catalog(config: Config) -> AsyncIterator[Catalog]:
    """A catalog without its listener and poll tasks: the pipeline's tests need only its writes and its view."""
    client = Redis.from_url(config.redis_url)
    catalog = Catalog(client, data_dir=config.data_dir)
    try:
        await catalog.reload()
        yield catalog
    finally:
        await client.aclose()


async def _package(config: Config, folder: Path = TEST_FUNCTIONS / "echo") -> Package:
    return await pipeline.checked(config, pack_folder(folder))


def test_a_package_whose_handler_does_not_import_is_refused_with_its_init_error_and_stores_nothing(
        tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> None:
        config = _config(tmp_path, redis_url)
        async with _catalog(config) as catalog:
            package = await _package(config)
            with pytest.raises(pipeline.InitFailed) as refused:
                await pipeline.deploy(catalog, FakeTrial({"echo": IMPORT_ERROR}), "echo", package)
            assert str(refused.value) == ("the handler does not import: Runtime.ImportModuleError: "
                                          "No module named 'missing'")
            assert refused.value.error["logs"] == "init log line\n"
            assert catalog.latest("echo") is None
    asyncio.run(scenario())


def test_a_tried_package_is_published_once_and_the_same_content_again_changes_nothing(
        tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> None:
        config = _config(tmp_path, redis_url)
        async with _catalog(config) as catalog:
            package, trial = await _package(config), FakeTrial()
            first = await pipeline.deploy(catalog, trial, "echo", package)
            again = await pipeline.deploy(catalog, trial, "echo", package)
            assert trial.tried == ["echo", "echo"]             # tried every time, before anything is stored
            assert first.created and first.version is not None and first.version.number == 1
            assert not again.created and again.version is not None and again.version.number == 1
    asyncio.run(scenario())


def test_a_zip_that_unpacks_past_the_configured_limit_is_refused(tmp_path: Path, redis_url: str) -> None:
    config = _config(tmp_path, redis_url, deploy={"unzipped_limit_bytes": 1024})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return 1\n" + "#" * 4000)
    with pytest.raises(CodeError, match="more than 1024 bytes"):
        asyncio.run(pipeline.checked(config, buffer.getvalue()))


def test_start_up_deploys_the_good_folders_and_logs_each_refused_one(
        tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("echo", "noimport", "nodeps"):
        shutil.copytree(TEST_FUNCTIONS / "echo", tmp_path / "functions" / name)
    trial = FakeTrial({"noimport": IMPORT_ERROR, "nodeps": DepsError("no matching distribution", output="...")})

    async def scenario() -> None:
        config = _config(tmp_path, redis_url)
        async with _catalog(config) as catalog:
            with caplog.at_level(logging.ERROR, logger="runtime.wiring.deploy"):
                await pipeline.deploy_folders(config, catalog, trial)
            assert catalog.names() == ["echo"]
            failures = {record.__dict__["function"]: record.getMessage() for record in caplog.records}
            assert failures == {
                "noimport": "not deployed: the handler does not import: Runtime.ImportModuleError: "
                            "No module named 'missing'",
                "nodeps": "not deployed: no matching distribution"}
            trial.tried.clear()
            await pipeline.deploy_folders(config, catalog, trial)      # a second start: echo is unchanged
            assert sorted(trial.tried) == ["nodeps", "noimport"]
    asyncio.run(scenario())


def test_each_role_builds_only_what_it_uses(tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> None:
        config = _config(tmp_path, redis_url)
        scheduler = await Base.start(config)
        gateway = await GatewayServices.start(config, redis_connect_timeout_s=1.0, redis_timeout_s=2.0)
        try:
            # The scheduler's: no executor (no sandboxes, no CPU pinning), no sinks, no blocking client.
            assert not any(hasattr(scheduler, part) for part in ("executor", "logs", "stats", "blocking_redis",
                                                                 "asyncq", "dead_letters"))
            # The gateway's: its store and dead-letter queues share one blocking client on the configured Redis.
            package = await _package(config)
            await pipeline.deploy(gateway.catalog, FakeTrial(), "echo", package)
            request_id = await asyncio.to_thread(gateway.asyncq.accept, function="echo", qualifier="$LATEST",
                                                 payload=b"{}", trigger="test")
            assert await gateway.redis.exists(keys.invocation(request_id))     # the same database as the async client
            assert (await asyncio.to_thread(gateway.dead_letters.page, "echo", offset=0, limit=10))["items"] == []
            await asyncio.wait_for(scheduler.catalog.reload(), 5)
            assert scheduler.catalog.latest("echo") is not None         # both follow the same catalog
        finally:
            await _stop(gateway, scheduler)
    asyncio.run(scenario())
