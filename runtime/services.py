"""The long-lived objects a gateway (or any role) needs, built once from the Config."""

from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis as sync_redis
from redis.asyncio import Redis

from .asyncq.dlq import DeadLetters
from .asyncq.store import AsyncStore
from .config import Config, KafkaSaslConfig
from .executor import Executor
from .executor.concurrency import ConcurrencyLimiter
from .functions.catalog import Catalog
from .functions.deps import DepsError
from .functions.package import CodeError
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


class KafkaUnfit(Exception):
    """Kafka cannot be used with the credentials configured; the message says why and what to do."""


_SASL_HANDSHAKE, _SASL_AUTHENTICATE = 17, 36       # Kafka's API keys (v1 and v0: the forms without tagged fields)
_ILLEGAL_SASL_STATE = 34                           # the answer of a listener without SASL to a SaslHandshake


def check_kafka(config: Config, *, timeout_s: float = 5.0) -> None:
    """Refuse a Kafka that requires credentials which `kafka_sasl` does not have, or refuses them; warn loudly
    when it lets in clients without any. The roles that make Kafka clients call this before they start. It asks
    the first bootstrap server that answers, with the SASL handshake itself: kafka-python says no more than
    "Unable to bootstrap", 30 s later. The password is never part of a message."""
    sasl = config.kafka_sasl
    servers = [server.strip() for server in (config.kafka_bootstrap_servers or "").split(",") if server.strip()]
    reasons = []
    for server in servers:
        try:
            offered, refusal = _sasl_login(server, sasl, timeout_s)
            break
        except (OSError, EOFError, ValueError, struct.error) as exc:
            reasons.append(f"{server}: {exc or type(exc).__name__}")
    else:
        log.warning("cannot check Kafka's credentials: no bootstrap server answered (%s); the consumers keep trying",
                    "; ".join(reasons) or "none configured")
        return
    if offered is None:
        if sasl is not None:
            raise KafkaUnfit(f"Kafka at {server} does not use SASL (its listener is PLAINTEXT) but kafka_sasl is "
                             "set: require SASL_PLAINTEXT on the broker's listener (or remove kafka_sasl) and start "
                             "again.")
        log.warning(
            "Kafka at %s accepts clients without credentials: any process that reaches it, which includes every "
            "process on this host and a function's sandbox (functions share the host network by default), could "
            "read every topic (other functions' stream records), write into them and move the mappings' committed "
            "offsets. Require SASL on its listeners (SASL_PLAINTEXT with PLAIN or SCRAM) and set kafka_sasl "
            "(the password in LAMBENT_KAFKA_SASL__PASSWORD).", server)
        return
    if sasl is None:
        raise KafkaUnfit(f"Kafka at {server} requires SASL authentication ({', '.join(offered) or 'no mechanism'}) "
                         "and kafka_sasl has no credentials. Set kafka_sasl (mechanism, username) and its password "
                         "(kafka_sasl.password, or LAMBENT_KAFKA_SASL__PASSWORD) and start again.")
    if sasl.mechanism not in offered:
        raise KafkaUnfit(f"Kafka at {server} does not offer SASL {sasl.mechanism} (it offers "
                         f"{', '.join(offered) or 'none'}): set kafka_sasl.mechanism to one of them and start again.")
    if refusal is not None:
        raise KafkaUnfit(f"Kafka at {server}: authentication failed: it refused user '{sasl.username}' with the "
                         f"password in kafka_sasl ({refusal}). Put that user's password in kafka_sasl.password / "
                         "LAMBENT_KAFKA_SASL__PASSWORD and start again.")
    log.info("Kafka at %s takes our SASL %s login as %s (SASL_PLAINTEXT: not encrypted; keep Kafka on loopback or a "
             "private network)", server, sasl.mechanism, sasl.username)


def _sasl_login(server: str, sasl: KafkaSaslConfig | None, timeout_s: float) -> tuple[list[str] | None, str | None]:
    """(offered, refusal): the SASL mechanisms the listener at `server` offers (None: a listener without SASL),
    and the broker's reason when it refused our PLAIN login (None: it took it, or it was not tried: SCRAM's
    exchange is left to kafka-python's own connections)."""
    host, _, port = server.rpartition(":")
    mechanism = sasl.mechanism if sasl is not None else "PLAIN"
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
        reply = _kafka_call(sock, _SASL_HANDSHAKE, 1, _kafka_string(mechanism), correlation=1)
        (error,) = struct.unpack_from(">h", reply)
        if error == _ILLEGAL_SASL_STATE:
            return None, None
        (count,) = struct.unpack_from(">i", reply, 2)
        offered, at = [], 6
        for _ in range(max(count, 0)):
            (size,) = struct.unpack_from(">h", reply, at)
            offered.append(reply[at + 2:at + 2 + size].decode())
            at += 2 + size
        if sasl is None or error != 0 or sasl.mechanism != "PLAIN":
            return offered, None
        token = b"\0" + sasl.username.encode() + b"\0" + sasl.password.get_secret_value().encode()
        reply = _kafka_call(sock, _SASL_AUTHENTICATE, 0, struct.pack(">i", len(token)) + token, correlation=2)
        (error, size) = struct.unpack_from(">hh", reply)
        if error == 0:
            return offered, None
        return offered, reply[4:4 + size].decode(errors="replace") if size >= 0 else f"error code {error}"


def _kafka_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def _kafka_call(sock: socket.socket, api_key: int, version: int, body: bytes, *, correlation: int) -> bytes:
    """Send one request (header v1: key, version, correlation id, client id) and return its answer's body."""
    message = struct.pack(">hhi", api_key, version, correlation) + _kafka_string("lambent-check") + body
    sock.sendall(struct.pack(">i", len(message)) + message)
    (size,) = struct.unpack(">i", _read_exactly(sock, 4))
    reply = _read_exactly(sock, size)
    if struct.unpack_from(">i", reply)[0] != correlation:
        raise ValueError("an answer to another request")
    return reply[4:]


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the broker closed the connection")
        data += chunk
    return data
