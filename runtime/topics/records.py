"""The Redis encoding of SNS-style topics: the only code that knows the JSON of a topic (`keys.TOPICS` entry,
`TopicRecord`) and of a subscription made with Subscribe (`keys.topic_subscriptions` entry, `Subscription`), and
the one reader and writer of the cluster's signing key (`keys.TOPICS_SIGNING_KEY`). topics/store.py's `Topics`
holds the SNS semantics over these records."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import orjson
import redis

from .. import keys
from ..functions.catalog import LATEST
from .checks import Scope


@dataclass(frozen=True, kw_only=True)
class TopicRecord:
    """A topic made with CreateTopic (or kept by a Subscribe to a topic only `sns` events named): its attributes
    (DisplayName, Policy, DeliveryPolicy), its tags and when it was made."""
    attributes: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    created_ms: int = 0

    def to_redis(self) -> bytes:
        return orjson.dumps({"attributes": self.attributes, "tags": self.tags, "created_ms": self.created_ms})

    @classmethod
    def from_redis(cls, raw: bytes | str) -> TopicRecord:
        data = orjson.loads(raw)
        return cls(attributes=dict(data["attributes"]), tags=dict(data.get("tags", {})),
                   created_ms=int(data.get("created_ms", 0)))


@dataclass(frozen=True, kw_only=True)
class Subscription:
    """A function subscribed to a topic. `spec_index`: the place of its `sns` event in function.yaml, or None for
    one made with Subscribe (the only kind stored in Redis)."""
    id: str
    topic: str
    function: str
    qualifier: str = LATEST
    filter_policy: str | None = None            # the JSON text as given (GetSubscriptionAttributes shows it)
    filter_policy_scope: Scope = "MessageAttributes"
    spec_index: int | None = None

    def to_redis(self) -> bytes:
        return orjson.dumps({"function": self.function, "qualifier": self.qualifier,
                             "filter_policy": self.filter_policy, "filter_policy_scope": self.filter_policy_scope})

    @classmethod
    def from_redis(cls, topic: str, sid: str, raw: bytes | str) -> Subscription:
        data = orjson.loads(raw)
        return cls(id=sid, topic=topic, function=data["function"], qualifier=data.get("qualifier", LATEST),
                   filter_policy=data.get("filter_policy"),
                   filter_policy_scope=data.get("filter_policy_scope", "MessageAttributes"))


def read_topic(connection: redis.Redis, topic: str) -> TopicRecord | None:
    """The stored record of a topic, None when CreateTopic never made it (it may still exist by `sns` events)."""
    raw = connection.hget(keys.TOPICS, topic)
    return TopicRecord.from_redis(raw) if raw else None


def stored_topics(connection: redis.Redis) -> set[str]:
    """The names of the topics that have a record."""
    return {name.decode() if isinstance(name, bytes) else str(name)
            for name in connection.hkeys(keys.TOPICS)}


def read_subscriptions(connection: redis.Redis, topic: str) -> list[Subscription]:
    """The subscriptions of `topic` made with Subscribe, in no order."""
    raw: dict[bytes, bytes] = connection.hgetall(keys.topic_subscriptions(topic))  # type: ignore[assignment]
    return [Subscription.from_redis(topic, sid.decode(), value) for sid, value in raw.items()]


def read_subscription(connection: redis.Redis, topic: str, sid: str) -> Subscription | None:
    raw = connection.hget(keys.topic_subscriptions(topic), sid)
    return None if raw is None else Subscription.from_redis(topic, sid, raw)


def signing_key(connection: redis.Redis) -> bytes:
    """The secret that signs the aws:sns events, made once for the whole cluster (SET NX) by whichever role
    publishes first, and read by every publisher."""
    connection.set(keys.TOPICS_SIGNING_KEY, secrets.token_hex(32), nx=True)
    value = connection.get(keys.TOPICS_SIGNING_KEY)
    return value if isinstance(value, bytes) else str(value).encode()
