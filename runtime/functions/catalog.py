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
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import orjson
from redis.asyncio import Redis

from .. import keys
from ..observability.outage import UNREACHABLE, RedisHealth, every
from ..shutdown import cancel
from .package import CodeError, Package, check_zip, pack_folder, unpack
from .spec import ALIAS_RE, NAME_RE, QUALIFIER_RE, Event, FunctionSpec, name_problem

log = logging.getLogger(__name__)

LATEST = "$LATEST"


class NotFound(LookupError):
    """No such function, version or alias; the message is the one to show the caller."""


class InUse(Exception):
    """A version that aliases still point at cannot be deleted; the message names them."""


@dataclass(frozen=True, kw_only=True)
class Version:
    """A function's code and configuration, as Lambda versions them: `$LATEST` (number 0), which every deploy or
    update rewrites, or a published version (numbers from 1), frozen from $LATEST."""
    function: str
    number: int
    code_hash: str
    spec: FunctionSpec
    created: str            # when this content was written (Lambda's LastModified)
    revision: int = 0       # $LATEST's count of changes; a published version keeps the one it was frozen from

    @property
    def is_latest(self) -> bool:
        return self.number == 0

    @property
    def label(self) -> str:
        """How Lambda names it: "$LATEST" or the version number."""
        return LATEST if self.is_latest else str(self.number)

    def same_content(self, code_hash: str, spec: FunctionSpec) -> bool:
        return self.code_hash == code_hash and self.spec == spec

    def to_redis(self) -> bytes:
        """The record's JSON: a `keys.versions` hash value, or $LATEST's in the `keys.FUNCTIONS` index."""
        return orjson.dumps({"function": self.function, "version": self.number, "code_hash": self.code_hash,
                             "spec": self.spec.to_json(), "created": self.created, "revision": self.revision})

    @classmethod
    def from_redis(cls, raw: bytes | str) -> Version:
        data = orjson.loads(raw)
        return cls(function=data["function"], number=int(data["version"]), code_hash=data["code_hash"],
                   spec=FunctionSpec.from_json(data["spec"]), created=data["created"],
                   revision=int(data.get("revision", 0)))

    @classmethod
    def latest_from_redis(cls, raw: bytes | str) -> Version:
        """A $LATEST record. One written before $LATEST had a record of its own is the newest numbered version
        (a deploy then always published): $LATEST has that version's content."""
        version = cls.from_redis(raw)
        return version if version.is_latest else replace(version, number=0, revision=version.number)


@dataclass(frozen=True, kw_only=True)
class Alias:
    """An alias: the published version it points at (0: $LATEST) and its description ("" when it has none).
    Stored as two hashes, `keys.aliases` (name -> number) and `keys.alias_descriptions` (name -> text)."""
    name: str
    number: int
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class Target:
    """What an invocation runs: a version, and the qualifier it was reached by ($LATEST, a number, an alias)."""
    version: Version
    qualifier: str
    named: bool = False     # the caller wrote the qualifier (`hello:$LATEST`): Lambda keeps it in the invoked ARN

    @property
    def executed_version(self) -> str:
        """As Lambda's X-Amz-Executed-Version: $LATEST, or the number of the published version that ran."""
        return self.version.label


@dataclass(frozen=True, kw_only=True)
class Change:
    """What a write makes $LATEST: stored code (its zip given when it may be new) and a configuration."""
    code_hash: str
    spec: FunctionSpec
    zip_bytes: bytes | None = None

    @classmethod
    def of(cls, package: Package) -> Change:
        return cls(code_hash=package.code_hash, spec=package.spec, zip_bytes=package.zip_bytes)


@dataclass(frozen=True, kw_only=True)
class DeployResult:
    latest: Version                 # $LATEST after the write
    version: Version | None = None  # the published version, when publishing was asked for
    changed: bool = False           # $LATEST changed
    created: bool = False           # a new version was published (False: the newest already had this content)


@dataclass
class _Entry:
    latest: Version
    aliases: dict[str, int] = field(default_factory=dict)
    published: tuple[int, ...] = ()


def split_name(name: str, qualifier: str | None = None) -> tuple[str, str]:
    """`hello`, `hello:3`, `hello:prod` (plus an optional separate qualifier) -> (name, qualifier)."""
    base, colon, inline = name.partition(":")
    if colon and not inline:
        raise ValueError(f"'{name}' ends with ':'; give a qualifier after it or leave the colon out")
    if (problem := name_problem(base)) is not None:
        raise ValueError(problem)
    if inline and qualifier and inline != qualifier:
        raise ValueError(f"the name says qualifier '{inline}' but Qualifier is '{qualifier}'")
    chosen = inline or qualifier or LATEST
    if not QUALIFIER_RE.match(chosen):
        raise ValueError(f"'{chosen}' is not a valid qualifier: use $LATEST, a version number or an alias")
    return base, chosen


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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
        self._code_sizes: dict[str, int] = {}
        self._generation: int | None = None
        self._reloaded_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Callable[[str], Awaitable[None] | None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._poll())]

    async def stop(self) -> None:
        await cancel(*self._tasks)
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
        """(function, index, event) of every `kind` event ("schedule", "kafka", "http") of each $LATEST."""
        return [(name, index, event) for name in self.names() if (latest := self.latest(name)) is not None
                for index, event in enumerate(latest.spec.events) if event.kind == kind]

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> the published version it points at (0: $LATEST)."""
        entry = self._entries.get(name)
        return dict(entry.aliases) if entry else {}

    def newest_published(self, name: str) -> int | None:
        """The number of the function's newest published version, None when it has none."""
        entry = self._entries.get(name)
        return entry.published[-1] if entry and entry.published else None

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
            if number == 0:
                return Target(version=entry.latest, qualifier=qualifier)
        return Target(version=await self.version(name, number), qualifier=qualifier)

    async def version(self, name: str, number: int) -> Version:
        """A published version (cached: it never changes)."""
        cached = self._versions.get((name, number))
        if cached is not None:
            return cached
        raw = await self._redis.hget(keys.versions(name), str(number)) if number > 0 else None
        if raw is None:
            raise NotFound(f"Function not found: {name}:{number} (no such version)")
        version = Version.from_redis(raw)
        self._versions[(name, number)] = version
        return version

    async def list_versions(self, name: str) -> list[Version]:
        """The published versions, by number."""
        raw = await self._redis.hgetall(keys.versions(name))
        return sorted((Version.from_redis(value) for value in raw.values()),
                      key=lambda version: version.number)

    async def described_aliases(self, name: str) -> dict[str, Alias]:
        """Every alias of the function with its description (the numbers from the cache, the descriptions read)."""
        raw = await self._redis.hgetall(keys.alias_descriptions(name))
        descriptions = {_text(key): _text(value) for key, value in raw.items()}
        return {alias: Alias(name=alias, number=number, description=descriptions.get(alias, ""))
                for alias, number in self.aliases(name).items()}

    async def tags(self, name: str) -> dict[str, str]:
        raw = await self._redis.hgetall(keys.tags(name))
        return {_text(key): _text(value) for key, value in raw.items()}

    async def code_path(self, version: Version) -> Path:
        """The unpacked code of a version on this node, fetched from Redis on first use."""
        target = self._code_dir / version.code_hash
        if target.is_dir():
            return target
        blob = await self.code_zip(version.code_hash)
        if blob is None:
            raise NotFound(f"code {version.code_hash[:12]} of {version.function}:{version.number} is missing")
        return await asyncio.to_thread(unpack, blob, target)

    async def code_zip(self, code_hash: str) -> bytes | None:
        """The stored zip of this code hash (`keys.code`), None when it is not stored."""
        blob = await self._redis.get(keys.code(code_hash))
        return blob if isinstance(blob, bytes) else None

    async def code_sizes(self, code_hashes: Iterable[str]) -> dict[str, int]:
        """The zip size of each stored code hash (a hash not stored is left out), read in one round trip for those
        not cached: code is stored by its content, so a size never changes."""
        wanted = set(code_hashes)
        missing = sorted(wanted - self._code_sizes.keys())
        if missing:
            async with self._redis.pipeline(transaction=False) as pipe:
                for code_hash in missing:
                    pipe.strlen(keys.code(code_hash))
                sizes = await pipe.execute()
            self._code_sizes.update((code_hash, size) for code_hash, size in zip(missing, sizes) if size)
        return {code_hash: self._code_sizes[code_hash] for code_hash in wanted if code_hash in self._code_sizes}

    # -- writing ---------------------------------------------------------------------------
    # Every write takes the function's lock, so that a check of what is there (does it exist, is it the
    # revision the caller saw) and the write that follows are one step on every node.

    def _lock(self, name: str) -> Any:
        return self._redis.lock(keys.deploy_lock(name), timeout=30, blocking_timeout=30)

    async def _stored_latest(self, name: str) -> Version | None:
        raw = await self._redis.hget(keys.FUNCTIONS, name)
        return Version.latest_from_redis(raw) if raw is not None else None

    async def deploy(self, name: str, package: Package) -> DeployResult:
        """`lambent deploy` and the function folders: the folder becomes $LATEST and is published, unless the
        newest version has its content already (as `aws lambda update-function-code --publish`)."""
        return await self.write(name, lambda _current: Change.of(package), publish=True)

    async def write(self, name: str, edit: Callable[[Version | None], Change], *, publish: bool = False
                    ) -> DeployResult:
        """Make $LATEST what `edit(current $LATEST or None)` returns (it raises to refuse the write, and is called
        under the lock); with `publish`, freeze it as a numbered version too. Unchanged content writes nothing."""
        if (problem := name_problem(name)) is not None:
            raise ValueError(problem)
        async with self._lock(name):
            current = await self._stored_latest(name)
            change = edit(current)
            latest = current
            changed = current is None or not current.same_content(change.code_hash, change.spec)
            if changed:
                if change.zip_bytes is not None:
                    await self._redis.set(keys.code(change.code_hash), change.zip_bytes, nx=True)
                elif not await self._redis.exists(keys.code(change.code_hash)):
                    raise NotFound(f"code {change.code_hash[:12]} is not stored; send the zip")
                latest = Version(function=name, number=0, code_hash=change.code_hash, spec=change.spec,
                                 created=_now(), revision=(current.revision if current else 0) + 1)
            assert latest is not None
            published, created = await self._freeze(latest) if publish else (None, False)
            if changed or created:
                async with self._redis.pipeline(transaction=True) as pipe:
                    if changed:
                        pipe.hset(keys.FUNCTIONS, name, latest.to_redis())
                    if created and published is not None:
                        pipe.hset(keys.versions(name), str(published.number), published.to_redis())
                    self._announce(pipe, name)
                    await pipe.execute()
        log.info("deployed" if changed else "unchanged", extra={
            "function": name, "revision": latest.revision, "code_hash": latest.code_hash[:12],
            "version": published.number if published else None})
        await self.reload()
        return DeployResult(latest=latest, version=published, changed=changed, created=created)

    async def publish(self, name: str, check: Callable[[Version], None] | None = None) -> DeployResult:
        """PublishVersion: freeze $LATEST as the next number, or give the newest version when it has the same
        content. `check($LATEST)` may refuse (a stale revision, a different code hash)."""
        async with self._lock(name):
            latest = await self._stored_latest(name)
            if latest is None:
                raise NotFound(f"Function not found: {name}")
            if check is not None:
                check(latest)
            published, created = await self._freeze(latest)
            if created:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hset(keys.versions(name), str(published.number), published.to_redis())
                    self._announce(pipe, name)
                    await pipe.execute()
        if created:
            log.info("published", extra={"function": name, "version": published.number})
            await self.reload()
        return DeployResult(latest=latest, version=published, created=created)

    async def _freeze(self, latest: Version) -> tuple[Version, bool]:
        """Called under the lock: the newest published version when it has $LATEST's content, else a new one
        (not yet stored)."""
        name = latest.function
        numbers = [int(number) for number in await self._redis.hkeys(keys.versions(name))]
        if numbers:
            newest = await self.version(name, max(numbers))
            if newest.same_content(latest.code_hash, latest.spec):
                return newest, False
        number = int(await self._redis.incr(keys.version_seq(name)))
        return replace(latest, number=number, created=_now()), True

    async def set_alias(self, name: str, alias: str, number: int,
                        check: Callable[[int | None], None] | None = None, *, description: str | None = None) -> None:
        """Point `alias` at published version `number`, or at $LATEST with 0 (a rollback is pointing it back).
        `check(the number it points at now, or None)` may refuse: the alias exists, or does not. A description
        given replaces the alias's ("" removes it)."""
        if not ALIAS_RE.match(alias):
            raise ValueError(f"'{alias}' is not a valid alias: 1-128 letters, digits, '-' or '_', not all digits")
        if alias == LATEST:
            raise ValueError("$LATEST is not an alias")
        async with self._lock(name):
            if not await self._redis.hexists(keys.FUNCTIONS, name):
                raise NotFound(f"Function not found: {name}")
            if number != 0:
                await self.version(name, number)          # NotFound when there is no such version
            if check is not None:
                now = await self._redis.hget(keys.aliases(name), alias)
                check(int(now) if now is not None else None)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(keys.aliases(name), alias, number)
                if description:
                    pipe.hset(keys.alias_descriptions(name), alias, description)
                elif description is not None:
                    pipe.hdel(keys.alias_descriptions(name), alias)
                self._announce(pipe, name)
                await pipe.execute()
        log.info("alias set", extra={"function": name, "alias": alias, "version": number or LATEST})
        await self.reload()

    async def delete_alias(self, name: str, alias: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.aliases(name), alias)
            pipe.hdel(keys.alias_descriptions(name), alias)
            self._announce(pipe, name)
            removed, *_ = await pipe.execute()
        await self.reload()
        return bool(removed)

    async def delete_version(self, name: str, number: int) -> None:
        """Delete one published version; InUse while an alias points at it, NotFound when there is none."""
        async with self._lock(name):
            pointing = sorted(_text(alias) for alias, target in
                              (await self._redis.hgetall(keys.aliases(name))).items() if int(target) == number)
            if pointing:
                raise InUse(f"Unable to delete version because the following aliases reference it: {pointing}")
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.versions(name), str(number))
                self._announce(pipe, name)
                removed, _, _ = await pipe.execute()
        if not removed:
            raise NotFound(f"Function not found: {name}:{number} (no such version)")
        self._versions.pop((name, number), None)
        log.info("version deleted", extra={"function": name, "version": number})
        await self.reload()

    async def delete(self, name: str) -> bool:
        """Remove a function with its versions, aliases and tags; every node stops its schedules and consumers.
        Code blobs stay: they are stored by content and other versions may share them."""
        async with self._lock(name):
            if not await self._redis.hexists(keys.FUNCTIONS, name):
                return False
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.FUNCTIONS, name)
                pipe.delete(keys.versions(name), keys.aliases(name), keys.alias_descriptions(name),
                            keys.version_seq(name), keys.tags(name))
                self._announce(pipe, name)
                await pipe.execute()
        self._versions = {key: value for key, value in self._versions.items() if key[0] != name}
        log.info("deleted", extra={"function": name})
        await self.reload()
        return True

    async def tag(self, name: str, tags: dict[str, str]) -> None:
        async with self._lock(name):
            if not await self._redis.hexists(keys.FUNCTIONS, name):
                raise NotFound(f"Function not found: {name}")
            if tags:
                await self._redis.hset(keys.tags(name), mapping=dict[Any, Any](tags))

    async def untag(self, name: str, tag_keys: list[str]) -> None:
        async with self._lock(name):
            if not await self._redis.hexists(keys.FUNCTIONS, name):
                raise NotFound(f"Function not found: {name}")
            if tag_keys:
                await self._redis.hdel(keys.tags(name), *tag_keys)

    @staticmethod
    def _announce(pipe: Any, name: str) -> None:
        pipe.incr(keys.CATALOG_GENERATION)
        pipe.publish(keys.CATALOG_CHANNEL, name)

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
            if latest is not None and latest.same_content(package.code_hash, package.spec):
                log.info("unchanged", extra={"function": folder.name, "revision": latest.revision})
                continue
            found.append((folder.name, package))
        return found

    # -- freshness -------------------------------------------------------------------------

    async def _reload_soon(self) -> None:
        """Before a 404: read the catalog again, so that what another node has written is seen as soon as that
        node has answered. A whole read at most every 0.2 s; sooner than that, only when the generation says
        the catalog changed since the last one (one GET): a flood of calls to a missing function costs a GET
        each, and a function another node creates just after a reload here (say, right after deleting it,
        whose notice caused that reload) is still found."""
        if self._health.down:
            raise self._health.unavailable()     # whether another node deployed it cannot be known now
        if time.monotonic() - self._reloaded_at >= 0.2:
            await self.reload()
        else:
            await self._reload_if_changed()

    async def reload(self) -> None:
        """Read the whole index, every alias map and the published numbers; tell listeners what changed."""
        generation = await self._redis.get(keys.CATALOG_GENERATION)
        index = await self._redis.hgetall(keys.FUNCTIONS)
        names = [name.decode() if isinstance(name, bytes) else name for name in index]
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.aliases(name))
                pipe.hkeys(keys.versions(name))
            replies = await pipe.execute()
        entries = {}
        for position, (name, raw) in enumerate(zip(names, index.values())):
            alias_map, numbers = replies[2 * position], replies[2 * position + 1]
            entries[name] = _Entry(latest=Version.latest_from_redis(raw),
                                   aliases={alias.decode(): int(number) for alias, number in alias_map.items()},
                                   published=tuple(sorted(int(number) for number in numbers)))
        changed = [name for name in set(entries) | set(self._entries)
                   if (old := self._entries.get(name)) is None or name not in entries
                   or (old.latest.revision, old.latest.code_hash, old.aliases, old.published)
                   != ((new := entries[name]).latest.revision, new.latest.code_hash, new.aliases, new.published)]
        self._entries = entries
        # Cached published versions live as long as they do: a function deleted (and maybe created again, its
        # numbers starting at 1) or a version deleted on any node is forgotten here too.
        self._versions = {key: version for key, version in self._versions.items()
                          if key[0] in entries and key[1] in entries[key[0]].published}
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
        await every(self._poll_s, self._reload_if_changed, health=self._health, logger=log,
                    failure="catalog poll failed; retrying")

    async def _reload_if_changed(self) -> None:
        generation = int(await self._redis.get(keys.CATALOG_GENERATION) or 0)
        if generation != self._generation:
            await self.reload()
