"""The long-lived objects of a role, built once from the Config: each role builds only what it uses.

    Base            the async Redis client, its health, the catalog        the scheduler
    WithExecutor    + the log and stats sinks and the executor              the worker
    WithAsyncQueue  + a blocking Redis client and the async store on it     streams
    GatewayServices + the dead-letter queues                                the gateway

A role's other clients (the worker's RQ connection, the scheduler's and streams' short-timeout ones) are its own.
`start` opens and starts everything; `stop` closes it in the reverse order.
"""

from __future__ import annotations

from typing import Any, Self

import redis as sync_redis
from redis.asyncio import Redis

from ..asyncq.dlq import DeadLetters
from ..asyncq.store import AsyncStore
from ..config import Config
from ..executor import Executor
from ..executor.concurrency import ConcurrencyLimiter
from ..functions.catalog import Catalog
from ..observability.logs import LogSink
from ..observability.outage import RedisHealth
from ..observability.stats import StatsSink


class Base:
    """What every role that follows the catalog holds: the Config, the async Redis client, whether Redis answers
    (one warning per outage, one info after), and the catalog."""

    config: Config
    redis: Redis
    health: RedisHealth
    catalog: Catalog

    def __init__(self, config: Config, *, redis_options: dict[str, Any]) -> None:
        self.config = config
        self._redis_options = redis_options

    @classmethod
    async def start(cls, config: Config, *, redis_connect_timeout_s: float | None = None,
                    redis_timeout_s: float | None = None) -> Self:
        """The timeouts bound each Redis call (redis-py's own defaults when None): the gateway sets short ones,
        so that a request never waits long on a Redis that does not answer."""
        given = (("socket_connect_timeout", redis_connect_timeout_s), ("socket_timeout", redis_timeout_s))
        options: dict[str, Any] = {"health_check_interval": 30,
                                   **{key: value for key, value in given if value is not None}}
        services = cls(config, redis_options=options)
        await services._open()
        return services

    async def _open(self) -> None:
        """Build and start this level's parts (a subclass builds its own after its base's)."""
        self.redis = redis = Redis.from_url(self.config.redis_url, **self._redis_options)
        await redis.ping()
        self.health = RedisHealth(self.config.redis_url, ping=redis.ping)
        # Connections idle in the pool when Redis went away died with it: dropped before anything runs again.
        self.health.on_back(lambda: redis.connection_pool.disconnect(inuse_connections=False))
        self.catalog = Catalog(redis, data_dir=self.config.data_dir, health=self.health)
        await self.catalog.start()

    async def stop(self) -> None:
        await self.catalog.stop()
        await self.health.stop()
        await self.redis.aclose()


class WithExecutor(Base):
    """A role that runs functions: the base, the executor, and the sinks of its invocations' logs and stats."""

    logs: LogSink
    stats: StatsSink
    executor: Executor

    async def _open(self) -> None:
        await super()._open()
        self.logs = LogSink(self.redis, keep_per_function=self.config.logs.keep_per_function, health=self.health)
        self.stats = StatsSink(self.redis, health=self.health)
        self.executor = Executor(self.config, catalog=self.catalog,
                                 limiter=ConcurrencyLimiter(self.redis, health=self.health), logs=self.logs,
                                 stats=self.stats)
        self.logs.start()
        self.stats.start()
        self.executor.start()

    async def stop(self) -> None:
        await self.executor.stop()
        await self.logs.stop()
        await self.stats.stop()
        await super().stop()


class WithAsyncQueue(WithExecutor):
    """A role that also accepts async invocations from its threads: a blocking Redis client (for them and for
    topics) and the async store on it."""

    blocking_redis: sync_redis.Redis
    asyncq: AsyncStore

    async def _open(self) -> None:
        await super()._open()
        self.blocking_redis = blocking = sync_redis.Redis.from_url(self.config.redis_url, **self._redis_options)
        self.health.on_back(lambda: blocking.connection_pool.disconnect(inuse_connections=False))
        self.asyncq = AsyncStore(blocking, self.config)

    async def stop(self) -> None:
        await super().stop()
        self.blocking_redis.close()


class GatewayServices(WithAsyncQueue):
    """The gateway's: everything above, and the dead-letter queues its admin API pages, redrives and purges."""

    dead_letters: DeadLetters

    async def _open(self) -> None:
        await super()._open()
        self.dead_letters = DeadLetters(self.blocking_redis)
