"""A function's dead-letter queue: list (paged), show, redrive (one or all), purge. Nothing expires."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from .. import keys
from .record import DeadLetter, InvocationRecord, as_text
from .store import now_ms, text

# KEYS: dlq, dlq index, record, delayed   ARGV: request id, fields (JSON object), now ms
# Back onto the queue with fresh attempts and a fresh event age, under the same request id; the fields keep the
# earlier attempts' history, which the new attempts are appended to. The record keeps its delivery count (a
# job of an earlier delivery stays stale).
_REDRIVE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local delivery = tonumber(redis.call('HGET', KEYS[3], 'delivery') or '0')
redis.call('DEL', KEYS[3])
for field, value in pairs(cjson.decode(ARGV[2])) do
  redis.call('HSET', KEYS[3], field, value)
end
redis.call('HSET', KEYS[3], 'delivery', delivery)
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return 1
"""


class DeadLetters:
    def __init__(self, connection: redis.Redis) -> None:
        self.redis = connection
        self._redrive = connection.register_script(_REDRIVE)

    def page(self, function: str, *, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """Oldest first; `next` is the offset of the following page, or None."""
        total = int(self.redis.zcard(keys.dlq_index(function)))
        ids = [text(raw) for raw in self.redis.zrange(keys.dlq_index(function), offset, offset + limit - 1)]
        entries = self.redis.hmget(keys.dlq(function), ids) if ids else []
        items = [DeadLetter.from_redis(entry).to_json() for entry in entries if entry is not None]
        following = offset + limit if offset + limit < total else None
        return {"function": function, "total": total, "offset": offset, "items": items, "next": following}

    def get(self, function: str, request_id: str) -> DeadLetter | None:
        entry = self.redis.hget(keys.dlq(function), request_id)
        return DeadLetter.from_redis(entry) if entry is not None else None

    def redrive(self, function: str, request_id: str | None = None) -> list[str]:
        """Re-queue one entry (by request id) or all of them, with fresh attempts and its earlier ones kept in its
        history; returns the request ids re-queued."""
        ids = [request_id] if request_id else [text(raw) for raw in self.redis.zrange(keys.dlq_index(function), 0, -1)]
        redriven = []
        for rid in ids:
            entry = self.get(function, rid)
            if entry is None:
                continue
            # Every earlier attempt stays in the record, with its error and times (from the dead letter, which
            # outlives the record's result_ttl_s): a redrive adds attempts, it does not rewrite what happened.
            record = InvocationRecord.new(function=entry.function, qualifier=entry.qualifier,
                                          payload=orjson.dumps(entry.record["requestPayload"]), trigger="redrive",
                                          received_ms=now_ms(), history=entry.attempts)
            fields = as_text(record.to_redis())
            if self._redrive(keys=[keys.dlq(function), keys.dlq_index(function), keys.invocation(rid),
                                   keys.ASYNC_DELAYED], args=[rid, orjson.dumps(fields), now_ms()]):
                redriven.append(rid)
        return redriven

    def purge(self, function: str) -> int:
        with self.redis.pipeline() as pipe:
            pipe.multi()
            pipe.zcard(keys.dlq_index(function))
            pipe.delete(keys.dlq(function), keys.dlq_index(function))
            count, _ = pipe.execute()
        return int(count)
