"""The long-lived objects a gateway (or any role) needs, built once from the Config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis as sync_redis
from redis.asyncio import Redis

from .asyncq.dlq import DeadLetters
from .asyncq.store import AsyncStore
from .config import Config
from .executor import Executor
from .executor.concurrency import ConcurrencyLimiter
from .functions.catalog import Catalog
from .functions.deps import DepsError
from .functions.store import CodeError
from .observability.logs import LogSink
from .observability.outage import RedisHealth
from .observability.stats import StatsSink
from .redis_url import authentication_failed, masked

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Services:
    config: Config
    redis: Redis
    catalog: Catalog
    executor: Executor
    logs: LogSink
    stats: StatsSink
    blocking_redis: sync_redis.Redis          # for RQ and the async store, used from threads
    asyncq: AsyncStore
    dead_letters: DeadLetters
    health: RedisHealth                       # whether Redis answers; one warning per outage, one info after

    @classmethod
    async def start(cls, config: Config, *, deploy_functions: bool = True, redis_connect_timeout_s: float | None = None,
                    redis_timeout_s: float | None = None) -> Services:
        """The timeouts bound each Redis call (redis-py's own defaults when None): the gateway sets short ones,
        so that a request never waits long on a Redis that does not answer."""
        given = (("socket_connect_timeout", redis_connect_timeout_s), ("socket_timeout", redis_timeout_s))
        timeouts: dict[str, Any] = {key: value for key, value in given if value is not None}
        redis = Redis.from_url(config.redis_url, health_check_interval=30, **timeouts)
        await redis.ping()
        health = RedisHealth(config.redis_url, ping=redis.ping)
        catalog = Catalog(redis, data_dir=config.data_dir, health=health)
        logs = LogSink(redis, keep_per_function=config.logs.keep_per_function, health=health)
        stats = StatsSink(redis, health=health)
        executor = Executor(config, catalog=catalog, limiter=ConcurrencyLimiter(redis, health=health), logs=logs,
                            stats=stats)
        await catalog.start()
        logs.start()
        stats.start()
        executor.start()
        blocking = sync_redis.Redis.from_url(config.redis_url, health_check_interval=30, **timeouts)
        # Connections idle in the pools when Redis went away died with it: dropped before anything runs again.
        health.on_back(lambda: redis.connection_pool.disconnect(inuse_connections=False))
        health.on_back(lambda: blocking.connection_pool.disconnect(inuse_connections=False))
        services = cls(config=config, redis=redis, catalog=catalog, executor=executor, logs=logs, stats=stats,
                       blocking_redis=blocking, asyncq=AsyncStore(blocking, config), dead_letters=DeadLetters(blocking),
                       health=health)
        if deploy_functions:
            await services.deploy_folders()
        return services

    async def deploy_folders(self) -> None:
        """Deploy the folders of functions_dir whose content changed, checked as a remote deploy is."""
        for name, package in await self.catalog.changed_folders(self.config.functions_dir):
            try:
                init_error = await self.executor.trial_init(name, package)
            except (CodeError, DepsError) as exc:
                log.error("not deployed: %s", exc, extra={"function": name})
                continue
            if init_error is not None:
                log.error("not deployed: the handler does not import: %s: %s", init_error["errorType"],
                          init_error["errorMessage"], extra={"function": name})
                continue
            await self.catalog.deploy(name, package)

    async def stop(self) -> None:
        await self.executor.stop()
        await self.catalog.stop()
        await self.logs.stop()
        await self.stats.stop()
        await self.health.stop()
        await self.redis.aclose()
        self.blocking_redis.close()


class RedisUnfit(Exception):
    """Redis cannot be used as it is; the message says why and what to do."""


def check_redis(redis_url: str) -> None:
    """Refuse an unreachable Redis, one that refuses our password, or one that may evict keys (events would
    vanish); warn when it keeps nothing on disk or lets in clients without a password. Every role calls this
    before it starts. The password is never part of a message (the URL is shown masked)."""
    shown = masked(redis_url)
    connection = sync_redis.Redis.from_url(redis_url, decode_responses=True, socket_connect_timeout=5)
    try:
        connection.ping()
    except sync_redis.AuthenticationError as exc:
        connection.close()
        raise RedisUnfit(authentication_failed(redis_url, str(exc))) from None
    except (sync_redis.ConnectionError, sync_redis.TimeoutError) as exc:
        connection.close()
        raise RedisUnfit(f"cannot reach Redis at {shown}: {exc}; start it or set redis_url / "
                         "LAMBENT_REDIS_URL") from None
    try:
        if _open_without_password(connection):
            log.warning(
                "Redis at %s accepts clients without a password: any process that reaches it, which includes "
                "every process on this host and a function's sandbox (functions share the host network by "
                "default), could read or rewrite the catalog, the queues and the DLQ, and run its own code as "
                "another function. Set `requirepass` in Redis and put the password in redis_url / "
                "LAMBENT_REDIS_URL (redis://:PASSWORD@host:port/0).", masked(_without_credentials(redis_url)))
        policy = connection.config_get("maxmemory-policy").get("maxmemory-policy")
        persistence = connection.config_get("appendonly")
        save = connection.config_get("save")
    except sync_redis.ResponseError:
        log.warning("cannot read Redis's CONFIG; make sure maxmemory-policy is noeviction and persistence is on")
        return
    finally:
        connection.close()
    if policy is not None and policy != "noeviction":
        raise RedisUnfit(f"Redis's maxmemory-policy is {policy}: it may evict queued events. "
                         "Set `maxmemory-policy noeviction` (redis.conf or CONFIG SET) and start again.")
    if persistence.get("appendonly") != "yes" and not save.get("save"):
        log.warning("Redis keeps nothing on disk (appendonly no, no save points): a Redis restart loses "
                    "every queued event. Run it with --appendonly yes.")


def _open_without_password(connection: sync_redis.Redis) -> bool:
    """Whether the same host, port and database answer PING to a client with no user name and no password."""
    pool = connection.connection_pool
    kwargs = {key: value for key, value in pool.connection_kwargs.items()
              if key not in ("username", "password", "credential_provider")}
    anonymous = sync_redis.Redis(connection_pool=sync_redis.ConnectionPool(connection_class=pool.connection_class,
                                                                           **kwargs))
    try:
        return bool(anonymous.ping())
    except (sync_redis.AuthenticationError, sync_redis.ResponseError):
        return False
    except (sync_redis.ConnectionError, sync_redis.TimeoutError, OSError):
        return False        # cannot tell; the connection with credentials works, which is what matters
    finally:
        anonymous.close()


def _without_credentials(url: str) -> str:
    """`url` without its user info, for the warning about a Redis that needs none."""
    try:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    except ValueError:
        return url
