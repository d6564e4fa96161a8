"""The long-lived objects a gateway (or any role) needs, built once from the Config."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from ..config import Config
from ..executor import Executor
from ..executor.concurrency import ConcurrencyLimiter
from ..functions.catalog import Catalog
from ..observability.logs import LogSink


@dataclass(kw_only=True)
class Services:
    config: Config
    redis: Redis
    catalog: Catalog
    executor: Executor
    logs: LogSink

    @classmethod
    async def start(cls, config: Config, *, deploy_functions: bool = True) -> Services:
        redis = Redis.from_url(config.redis_url, health_check_interval=30)
        await redis.ping()
        catalog = Catalog(redis, data_dir=config.data_dir)
        logs = LogSink(redis, keep_per_function=config.logs.keep_per_function)
        executor = Executor(config, catalog=catalog, limiter=ConcurrencyLimiter(redis), logs=logs)
        await catalog.start()
        logs.start()
        executor.start()
        if deploy_functions:
            await catalog.deploy_folders(config.functions_dir)
        return cls(config=config, redis=redis, catalog=catalog, executor=executor, logs=logs)

    async def stop(self) -> None:
        await self.executor.stop()
        await self.catalog.stop()
        await self.logs.stop()
        await self.redis.aclose()
