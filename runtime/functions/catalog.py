"""The function catalog: versions and aliases in Redis, cached on each node and kept fresh.

Every node reads the same catalog, so a deploy on one server is seen by all: the writer bumps a
generation counter and publishes the function's name; readers reload on the message, and poll
the counter as a fallback for a missed message.

The cache is what keeps a node serving through a Redis outage: `resolve` of a known function needs no Redis.
Meanwhile the listener and the poll wait for Redis (the outage is logged once: observability/outage.py),
and the cache is reloaded as soon as it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

import orjson
from redis.asyncio import Redis

from .. import keys
from ..observability.outage import UNREACHABLE, RedisHealth
from .spec import ALIAS_RE, NAME_RE, QUALIFIER_RE, Event, FunctionSpec
from .store import CodeError, Package, check_zip, pack_folder, unpack

log = logging.getLogger(__name__)

LATEST = "$LATEST"


class NotFound(LookupError):
    """No such function, version or alias; the message is the one to show the caller."""


@dataclass(frozen=True, kw_only=True)
class Version:
    """One immutable, numbered version of a function."""
    function: str
    number: int
    code_hash: str
    spec: FunctionSpec
    created: str

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "version": self.number, "code_hash": self.code_hash,
                "spec": self.spec.to_json(), "created": self.created}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Version:
        return cls(function=data["function"], number=int(data["version"]), code_hash=data["code_hash"],
                   spec=FunctionSpec.from_json(data["spec"]), created=data["created"])


@dataclass(frozen=True, kw_only=True)
class Target:
    """What an invocation runs: a version, and the qualifier it was reached by ($LATEST, a number, an alias)."""
    version: Version
    qualifier: str
    named: bool = False     # the caller wrote the qualifier (`hello:$LATEST`): Lambda keeps it in the invoked ARN

    @property
    def executed_version(self) -> str:
        """As Lambda's X-Amz-Executed-Version: $LATEST when unqualified, else the number."""
        return LATEST if self.qualifier == LATEST else str(self.version.number)


@dataclass(frozen=True, kw_only=True)
class DeployResult:
    version: Version
    created: bool          # False: the content was the same as the newest version's


@dataclass
class _Entry:
    latest: Version
    aliases: dict[str, int] = field(default_factory=dict)


def split_name(name: str, qualifier: str | None = None) -> tuple[str, str]:
    """`hello`, `hello:3`, `hello:prod` (plus an optional separate qualifier) -> (name, qualifier)."""
    base, colon, inline = name.partition(":")
    if colon and not inline:
        raise ValueError(f"'{name}' ends with ':'; give a qualifier after it or leave the colon out")
    if not NAME_RE.match(base):
        raise ValueError(f"'{base}' is not a valid function name: use 1-64 letters, digits, '-' or '_'")
    if inline and qualifier and inline != qualifier:
        raise ValueError(f"the name says qualifier '{inline}' but Qualifier is '{qualifier}'")
    chosen = inline or qualifier or LATEST
    if not QUALIFIER_RE.match(chosen):
        raise ValueError(f"'{chosen}' is not a valid qualifier: use $LATEST, a version number or an alias")
    return base, chosen


class Catalog:
    """The node's view of the catalog; `resolve` is served from memory on the hot path."""

    def __init__(self, redis: Redis, *, data_dir: Path, poll_s: float = 2.0,
                 health: RedisHealth | None = None) -> None:
        self._redis = redis
        self._health = health or RedisHealth.of(redis)
        self._code_dir = data_dir / "code"
        self._poll_s = poll_s
        self._entries: dict[str, _Entry] = {}
        self._versions: dict[tuple[str, int], Version] = {}
        self._generation: int | None = None
        self._reloaded_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Callable[[str], Awaitable[None] | None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._poll())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def on_change(self, callback: Callable[[str], Awaitable[None] | None]) -> None:
        """Call `callback(name)` after a function's versions or aliases changed on any node."""
        self._listeners.append(callback)

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._entries)

    def latest(self, name: str) -> Version | None:
        entry = self._entries.get(name)
        return entry.latest if entry else None

    def events(self, kind: str) -> list[tuple[str, int, Event]]:
        """(function, index, event) of every `kind` event ("schedule", "kafka", "http") of the newest versions."""
        return [(name, index, event) for name in self.names() if (latest := self.latest(name)) is not None
                for index, event in enumerate(latest.spec.events) if event.kind == kind]

    def aliases(self, name: str) -> dict[str, int]:
        entry = self._entries.get(name)
        return dict(entry.aliases) if entry else {}

    async def resolve(self, name: str, qualifier: str = LATEST) -> Target:
        entry = self._entries.get(name)
        if entry is None:
            # Another node may have just deployed it: ask Redis before saying 404 (at most every 0.2 s, so a
            # flood of calls to a missing function does not turn into a flood of catalog reads).
            await self._reload_soon()
            entry = self._entries.get(name)
            if entry is None:
                raise NotFound(f"Function not found: {name}")
        if qualifier == LATEST:
            return Target(version=entry.latest, qualifier=LATEST)
        if qualifier.isdigit():
            number = int(qualifier)
        else:
            if qualifier not in entry.aliases:
                await self._reload_soon()
                entry = self._entries.get(name, entry)
            if qualifier not in entry.aliases:
                raise NotFound(f"Function not found: {name}:{qualifier} (no such alias)")
            number = entry.aliases[qualifier]
        return Target(version=await self.version(name, number), qualifier=qualifier)

    async def version(self, name: str, number: int) -> Version:
        cached = self._versions.get((name, number))
        if cached is not None:
            return cached
        raw = await self._redis.hget(keys.versions(name), str(number))
        if raw is None:
            raise NotFound(f"Function not found: {name}:{number} (no such version)")
        version = Version.from_json(orjson.loads(raw))
        self._versions[(name, number)] = version
        return version

    async def list_versions(self, name: str) -> list[Version]:
        raw = await self._redis.hgetall(keys.versions(name))
        return sorted((Version.from_json(orjson.loads(value)) for value in raw.values()),
                      key=lambda version: version.number)

    async def code_path(self, version: Version) -> Path:
        """The unpacked code of a version on this node, fetched from Redis on first use."""
        target = self._code_dir / version.code_hash
        if target.is_dir():
            return target
        blob = await self._redis.get(keys.code(version.code_hash))
        if not isinstance(blob, bytes):
            raise NotFound(f"code {version.code_hash[:12]} of {version.function}:{version.number} is missing")
        return await asyncio.to_thread(unpack, blob, target)

    # -- writing ---------------------------------------------------------------------------

    async def deploy(self, name: str, package: Package) -> DeployResult:
        """Store the code and make it the newest version, unless it equals the newest already."""
        if not NAME_RE.match(name):
            raise ValueError(f"'{name}' is not a valid function name: use 1-64 letters, digits, '-' or '_'")
        lock = self._redis.lock(keys.deploy_lock(name), timeout=30, blocking_timeout=30)
        async with lock:
            current = await self._redis.hget(keys.FUNCTIONS, name)
            if current is not None:
                latest = Version.from_json(orjson.loads(current))
                if latest.code_hash == package.code_hash:
                    log.info("unchanged", extra={"function": name, "version": latest.number})
                    return DeployResult(version=latest, created=False)
            await self._redis.set(keys.code(package.code_hash), package.zip_bytes, nx=True)
            number = int(await self._redis.incr(keys.version_seq(name)))
            version = Version(function=name, number=number, code_hash=package.code_hash, spec=package.spec,
                              created=datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
            record = orjson.dumps(version.to_json())
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(keys.versions(name), str(number), record)
                pipe.hset(keys.FUNCTIONS, name, record)
                pipe.incr(keys.CATALOG_GENERATION)
                pipe.publish(keys.CATALOG_CHANNEL, name)
                await pipe.execute()
        log.info("deployed", extra={"function": name, "version": number, "code_hash": package.code_hash[:12]})
        await self.reload()
        return DeployResult(version=version, created=True)

    async def set_alias(self, name: str, alias: str, number: int) -> None:
        """Point `alias` at version `number` (a rollback is pointing it back)."""
        if not ALIAS_RE.match(alias):
            raise ValueError(f"'{alias}' is not a valid alias: 1-128 letters, digits, '-' or '_', not all digits")
        if alias == LATEST:
            raise ValueError("$LATEST is not an alias")
        await self.version(name, number)          # NotFound when there is no such version
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.aliases(name), alias, number)
            pipe.incr(keys.CATALOG_GENERATION)
            pipe.publish(keys.CATALOG_CHANNEL, name)
            await pipe.execute()
        log.info("alias set", extra={"function": name, "alias": alias, "version": number})
        await self.reload()

    async def delete_alias(self, name: str, alias: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.aliases(name), alias)
            pipe.incr(keys.CATALOG_GENERATION)
            pipe.publish(keys.CATALOG_CHANNEL, name)
            removed, _, _ = await pipe.execute()
        await self.reload()
        return bool(removed)

    async def delete(self, name: str) -> bool:
        """Remove a function with its versions and aliases; every node stops its schedules and consumers.
        Code blobs stay: they are stored by content and other versions may share them."""
        lock = self._redis.lock(keys.deploy_lock(name), timeout=30, blocking_timeout=30)
        async with lock:
            if not await self._redis.hexists(keys.FUNCTIONS, name):
                return False
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.FUNCTIONS, name)
                pipe.delete(keys.versions(name), keys.aliases(name), keys.version_seq(name))
                pipe.incr(keys.CATALOG_GENERATION)
                pipe.publish(keys.CATALOG_CHANNEL, name)
                await pipe.execute()
        self._versions = {key: value for key, value in self._versions.items() if key[0] != name}
        log.info("deleted", extra={"function": name})
        await self.reload()
        return True

    async def changed_folders(self, functions_dir: Path) -> list[tuple[str, Package]]:
        """The function folders whose content differs from their newest version; a bad folder is logged
        and left out, never fatal."""
        found: list[tuple[str, Package]] = []
        if not functions_dir.is_dir():
            log.warning("functions folder not found", extra={"path": str(functions_dir)})
            return found
        for folder in sorted(path for path in functions_dir.iterdir() if path.is_dir()):
            if folder.name.startswith((".", "_")):
                continue
            if not NAME_RE.match(folder.name):
                log.error("skipped folder: not a valid function name", extra={"path": str(folder)})
                continue
            try:
                package = check_zip(await asyncio.to_thread(pack_folder, folder))
            except CodeError as exc:
                log.error("skipped function folder: %s", exc, extra={"function": folder.name})
                continue
            latest = self.latest(folder.name)
            if latest is not None and latest.code_hash == package.code_hash:
                log.info("unchanged", extra={"function": folder.name, "version": latest.number})
                continue
            found.append((folder.name, package))
        return found

    # -- freshness -------------------------------------------------------------------------

    async def _reload_soon(self) -> None:
        if self._health.down:
            raise self._health.unavailable()     # whether another node deployed it cannot be known now
        if time.monotonic() - self._reloaded_at >= 0.2:
            await self.reload()

    async def reload(self) -> None:
        """Read the whole index and every alias map; tell listeners which functions changed."""
        generation = await self._redis.get(keys.CATALOG_GENERATION)
        index = await self._redis.hgetall(keys.FUNCTIONS)
        names = [name.decode() if isinstance(name, bytes) else name for name in index]
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.aliases(name))
            alias_maps = await pipe.execute()
        entries = {}
        for name, raw, alias_map in zip(names, index.values(), alias_maps):
            version = Version.from_json(orjson.loads(raw))
            self._versions[(name, version.number)] = version
            entries[name] = _Entry(latest=version, aliases={
                alias.decode(): int(number) for alias, number in alias_map.items()})
        changed = [name for name in set(entries) | set(self._entries)
                   if (old := self._entries.get(name)) is None or name not in entries
                   or old.latest.number != entries[name].latest.number or old.aliases != entries[name].aliases]
        self._entries = entries
        self._generation = int(generation or 0)
        self._reloaded_at = time.monotonic()
        for name in changed:
            for callback in self._listeners:
                outcome = callback(name)
                if outcome is not None:
                    await outcome

    async def _listen(self) -> None:
        missed = False
        while True:
            try:
                await self._health.wait_back()
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.CATALOG_CHANNEL)
                    if missed:                  # what changed while we were not listening
                        await self.reload()
                        missed = False
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            await self.reload()
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:          # the cache serves meanwhile
                self._health.failed(exc)
                missed = True
                await asyncio.sleep(self._poll_s / 2)
            except Exception:   # a Redis hiccup: the poll loop covers us until we reconnect
                log.warning("catalog listener lost Redis; retrying", exc_info=True)
                missed = True
                await asyncio.sleep(1.0)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            if self._health.down:
                continue
            try:
                generation = int(await self._redis.get(keys.CATALOG_GENERATION) or 0)
                if generation != self._generation:
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                self._health.failed(exc)
            except Exception:
                log.warning("catalog poll failed; retrying", exc_info=True)
