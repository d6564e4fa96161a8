"""Whether this process reaches Redis, for the parts that can do without it meanwhile.

Every part of a role that talks to Redis (built by runtime.wiring) reports a call that could not reach it
(`failed`). The first such failure starts an outage: the process's one `redis_retry.Outage` logs its single
warning, and a probe pings Redis with backoff (0.1 s doubling to 1 s) until it answers. That answer ends the
outage for every part at once: the connection pools drop what died with the server (`on_back`), then the
Outage logs its single info line. Meanwhile the parts that can do without Redis (invocation logs and stats,
reserved concurrency, the catalog cache, the gateway's refusals) look at `down` and skip it, instead of each
failing, waiting on a timeout and logging on its own. Sharing the Outage of redis_retry means a role whose
own loops retry Redis there (a worker's) still says it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

import redis

from ..redis_retry import UNREACHABLE, Backoff, outage_for
from ..redis_url import MASK, masked

log = logging.getLogger(__name__)

__all__ = ["UNREACHABLE", "RedisHealth", "RedisUnavailable"]

PROBE_FIRST_S = 0.1        # the probe's first wait; it doubles up to PROBE_MAX_S
PROBE_MAX_S = 1.0          # so an outage ends at most about a second after Redis answers again


class RedisUnavailable(redis.ConnectionError):
    """Refused without asking Redis: this process already knows that Redis is down. A ConnectionError, so
    that whatever handles Redis's own errors handles this one too."""


class RedisHealth:
    """One per process. `failed` may be called from any thread; everything else runs on the event loop
    the object was made on."""

    def __init__(self, url: str, *, ping: Callable[[], Awaitable[Any]]) -> None:
        self.url = masked(url)
        self._outage = outage_for(url)                 # says it once per process, however many report it
        self._secret = _password(url)
        self._ping = ping
        self._loop: asyncio.AbstractEventLoop | None = _running_loop()
        self._lock = threading.Lock()
        self._down_since: float | None = None          # time.time() of the first failure this object saw
        self._reason = ""
        self._probe: asyncio.Task[None] | None = None
        self._back = asyncio.Event()
        self._back.set()
        self._on_back: list[Callable[[], Awaitable[None] | None]] = []

    @classmethod
    def of(cls, client: Any) -> RedisHealth:
        """For a part built on its own with just a client (benchmarks, tests): its host, port and db."""
        kwargs = client.connection_pool.connection_kwargs
        url = f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
        return cls(url, ping=client.ping)

    # -- what the parts ask ----------------------------------------------------------------------

    @property
    def down(self) -> bool:
        return self._down_since is not None

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def down_since(self) -> str | None:
        since = self._down_since
        if since is None:
            return None
        return datetime.fromtimestamp(since, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def message(self) -> str:
        """What a refused caller is told."""
        return f"Redis is not reachable at {self.url}: {self._reason or 'no answer'}; retry later"

    def unavailable(self) -> RedisUnavailable:
        """The exception a part raises instead of asking a Redis known to be down."""
        return RedisUnavailable(self._reason)

    async def wait_back(self) -> None:
        """Return once Redis answers (at once when it is not down)."""
        if self.down and self._back.is_set():
            self._start_probe()          # reported from another thread a moment ago: its probe is on its way
        await self._back.wait()

    def on_back(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Run `callback` when an outage ends, before the parts use Redis again."""
        self._on_back.append(callback)

    # -- what the parts report -------------------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """A call could not reach Redis. The first such call of an outage has it logged and starts the probe."""
        reason = self._describe(exc)
        with self._lock:
            self._reason = reason
            if self._down_since is not None:
                return
            self._down_since = time.time()
        self._outage.failed(_Said(reason))
        self._in_loop(self._start_probe)

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None

    # -- the probe -------------------------------------------------------------------------------

    def _in_loop(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = _running_loop()
        if loop is None or loop.is_closed():
            return
        if _running_loop() is loop:
            callback()
        else:
            loop.call_soon_threadsafe(callback)

    def _start_probe(self) -> None:
        self._back.clear()
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        backoff = Backoff(PROBE_FIRST_S, PROBE_MAX_S, jitter=0.2)     # jitter: a cluster's nodes not in step
        while True:
            await asyncio.sleep(backoff.next_s())
            try:
                await self._ping()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:      # anything but an answer: still down, and the reason may have changed
                with self._lock:
                    self._reason = self._describe(exc)
        for callback in self._on_back:
            try:
                outcome = callback()
                if outcome is not None:
                    await outcome
            except Exception:
                log.warning("a callback for Redis being back failed", exc_info=True)
        with self._lock:
            self._down_since = None
        self._outage.ok()                # the one info line (unless another loop of the process saw it first)
        self._back.set()

    def _describe(self, exc: BaseException) -> str:
        """The driver's message, one line, without a trailing period, never with the password in it."""
        text = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
        if self._secret:
            text = text.replace(self._secret, MASK)
        return text[:300]


async def every(interval_s: float, step: Callable[[], Awaitable[None]], *, health: RedisHealth,
                logger: logging.Logger, failure: str) -> None:
    """Run `step` every `interval_s` until cancelled, not while Redis is down: a step that cannot reach Redis
    tells `health` (the outage is logged once, there); any other failure is logged as `failure` by `logger`, and
    the next interval tries again."""
    while True:
        await asyncio.sleep(interval_s)
        if health.down:
            continue
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except UNREACHABLE as exc:
            health.failed(exc)
        except Exception:
            logger.warning(failure, exc_info=True)


class _Said(Exception):
    """The reason as this module words it (one line, the password never in it), for the Outage's warning."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _password(url: str) -> str | None:
    """The password in `url`, to keep it out of every message (redis-py's never holds it; this makes sure)."""
    try:
        parts = urlsplit(url)
        if parts.password:
            return unquote(parts.password)
        return next((value for key, value in parse_qsl(parts.query) if key == "password"), None) or None
    except ValueError:
        return None
