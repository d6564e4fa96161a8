"""SNS-style topics in Redis: topics, subscriptions of functions, and a publish's fan-out to async invocations.

The one owner of the topics (`keys.TOPICS`) and the subscriptions (`keys.topic_subscriptions`), whose records and
their encoding are topics/records.py's. Every role
that publishes (the gateway's SNS API, the worker's `sns` destinations, the streams role's `on_failure`) uses
`Topics` over a blocking redis-py client, as asyncq/store.py's AsyncStore (the gateway calls it in a thread).

Two kinds of subscription, seen the same way by the API:
  - made with Subscribe (protocol `lambda`), stored in Redis;
  - a `sns` event of a function's $LATEST `function.yaml`, read from the catalog: it exists while the event does,
    its ARN is stable (derived from function, event index and topic), and only function.yaml changes it.
A topic exists when CreateTopic made it or a `sns` event names it.

A publish is checked whole (topic, size, attributes, structure), then every subscription whose filter policy
matches becomes an asynchronous invocation of its function with Lambda's `aws:sns` event, all written in one
Redis transaction (AsyncStore.accept_many): a publish that answered is in Redis for every subscriber, and one
that failed is in Redis for none. Retries, event age, the DLQ and destinations are then each function's own.
A subscription to a function that does not exist is still queued: the worker dead-letters it at once in that
function name's DLQ (`GET /functions/NAME/dlq`), where the message can be seen and redriven once it exists.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import orjson
import redis

from .. import keys
from ..asyncq.store import AsyncStore, NewInvocation, now_ms
from ..config import Config
from ..events.sns import sns_event
from ..events.trace import trace_header
from ..functions.catalog import LATEST, Catalog, split_name
from ..functions.filters import FilterError, Policy, compile_policy
from ..functions.spec import TOPIC_NAME_RE
from .checks import (DELIVERY_POLICY, MAX_BATCH, MAX_MESSAGE_BYTES, MAX_TAGS, Scope, SnsError, body_of,
                     check_subject, checked_attributes, checked_tags, default_policy, delivered_message, invalid,
                     not_found, subscription_attributes, topic_attributes)
from .records import (Subscription, TopicRecord, read_subscription, read_subscriptions, read_topic, signing_key,
                      stored_topics)

log = logging.getLogger(__name__)

PAGE_SIZE = 100                     # ListTopics / ListSubscriptions pages, as SNS
_SPEC_NAMESPACE = uuid.UUID("6c1e7e0a-3f0e-4c5b-9a57-5e0d6e4c2b11")     # ARNs of function.yaml subscriptions
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_FUNCTION_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):function:"
                           r"(?P<name>[^:]+)(?::(?P<qualifier>[^:]+))?$")


def _matches(subscription: Subscription, attributes: Mapping[str, Any], body: Any) -> bool:
    """Whether a message (its attributes, its body) passes the subscription's filter policy."""
    if subscription.filter_policy is None:
        return True
    policy = _compiled(subscription.filter_policy, subscription.filter_policy_scope)
    return policy.matches(attributes if subscription.filter_policy_scope == "MessageAttributes" else body)


@functools.lru_cache(maxsize=1024)
def _compiled(policy_text: str, scope: Scope) -> Policy:
    """A stored policy, compiled once per process (it was checked when the subscription was made)."""
    return compile_policy(orjson.loads(policy_text), scope=scope)


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A checked publish: its message id and the invocations of the subscriptions it matched (not yet written)."""
    message_id: str
    invocations: list[NewInvocation] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class BatchEntry:
    """One entry of PublishBatch, as the API parsed it."""
    id: str
    message: str
    subject: str | None = None
    attributes: dict[str, dict[str, Any]] | None = None
    structure: str | None = None


class Topics:
    """Topics and subscriptions over a blocking Redis client, with the catalog for function.yaml's `sns` events."""

    def __init__(self, connection: redis.Redis, config: Config, *, catalog: Catalog,
                 asyncq: AsyncStore | None = None) -> None:
        self.redis = connection
        self.config = config
        self.catalog = catalog
        self.asyncq = asyncq or AsyncStore(connection, config)
        self._signing_key: bytes | None = None

    # -- names -----------------------------------------------------------------------------

    @property
    def _prefix(self) -> str:
        return f"arn:aws:sns:{self.config.region}:{self.config.account_id}:"

    def topic_arn(self, topic: str) -> str:
        return self._prefix + topic

    def subscription_arn(self, subscription: Subscription) -> str:
        return f"{self.topic_arn(subscription.topic)}:{subscription.id}"

    def topic_of(self, arn: str, parameter: str = "TopicArn") -> str:
        """The topic an ARN names; InvalidParameter for what is no topic ARN, NotFound for one of another place."""
        parts = arn.split(":")
        if len(parts) != 6 or parts[:3] != ["arn", "aws", "sns"] or not TOPIC_NAME_RE.match(parts[5]):
            raise invalid(f"{parameter}: '{arn[:300]}' is not a topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
        if not arn.startswith(self._prefix):
            raise not_found(f"Topic does not exist: this server is region {self.config.region}, account "
                            f"{self.config.account_id} ({arn[:300]})")
        return parts[5]

    def _existing_topic(self, arn: str, parameter: str = "TopicArn") -> str:
        topic = self.topic_of(arn, parameter)
        if not self.exists(topic):
            raise not_found("Topic does not exist")
        return topic

    # -- topics ----------------------------------------------------------------------------

    def _implicit(self) -> set[str]:
        return {event.sns.topic for _, _, event in self.catalog.events("sns") if event.sns is not None}

    def names(self) -> list[str]:
        """Every topic: made with CreateTopic, or named by a function's `sns` event."""
        return sorted(stored_topics(self.redis) | self._implicit())

    def exists(self, topic: str) -> bool:
        return topic in self._implicit() or bool(self.redis.hexists(keys.TOPICS, topic))

    def create(self, name: str, attributes: Mapping[str, str] | None = None,
               tags: Mapping[str, str] | None = None) -> str:
        """CreateTopic: idempotent as SNS's (the same name gives the same ARN), refusing what would change it."""
        if not TOPIC_NAME_RE.match(name):
            raise invalid("Topic Name: use 1-256 letters, digits, '-' or '_'")
        if name.endswith(".fifo") or (attributes or {}).get("FifoTopic", "false").lower() == "true":
            raise invalid("Attributes Reason: FIFO topics deliver to SQS queues only; Lambent's topics deliver "
                          "to functions: create a standard topic (a name without .fifo)")
        given = topic_attributes(attributes or {})
        tagged = checked_tags(tags or {})
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(keys.TOPICS)
                record = read_topic(pipe, name)
                if record is not None:
                    if any(record.attributes.get(key, "") != value for key, value in given.items()):
                        raise invalid("Attributes Reason: Topic already exists with different attributes")
                    if tagged and any(record.tags.get(key) != value for key, value in tagged.items()):
                        raise invalid("Tags Reason: Topic already exists with different tags")
                    return self.topic_arn(name)
                pipe.multi()
                pipe.hset(keys.TOPICS, name, TopicRecord(attributes=given, tags=tagged,
                                                         created_ms=now_ms()).to_redis())
                pipe.execute()
            except redis.WatchError:
                pass        # made at the same moment by another caller: the same ARN either way
        return self.topic_arn(name)

    def delete(self, arn: str) -> None:
        """DeleteTopic: the topic and the subscriptions made with Subscribe. As SNS, deleting a topic that does not
        exist is no error; a topic that `sns` events name stays, with their subscriptions."""
        topic = self.topic_of(arn)
        with self.redis.pipeline() as pipe:
            pipe.multi()
            pipe.hdel(keys.TOPICS, topic)
            pipe.delete(keys.topic_subscriptions(topic))
            pipe.execute()

    def list_topics(self, token: str | None) -> tuple[list[str], str | None]:
        return _page([self.topic_arn(name) for name in self.names()], token)

    def attributes(self, arn: str) -> dict[str, str]:
        """GetTopicAttributes, as SNS names them."""
        topic = self._existing_topic(arn)
        attributes = (read_topic(self.redis, topic) or TopicRecord()).attributes
        topic_arn = self.topic_arn(topic)
        found = {"TopicArn": topic_arn, "Owner": self.config.account_id,
                 "DisplayName": attributes.get("DisplayName", ""),
                 "Policy": attributes.get("Policy") or default_policy(topic_arn, self.config.account_id),
                 "SubscriptionsConfirmed": str(len(self.subscriptions(topic))),
                 "SubscriptionsPending": "0", "SubscriptionsDeleted": "0",
                 "EffectiveDeliveryPolicy": attributes.get("DeliveryPolicy") or DELIVERY_POLICY,
                 "FifoTopic": "false"}
        if attributes.get("DeliveryPolicy"):
            found["DeliveryPolicy"] = attributes["DeliveryPolicy"]
        return found

    def set_attribute(self, arn: str, name: str, value: str) -> None:
        topic = self._existing_topic(arn)
        checked = topic_attributes({name: value})
        self._edit_record(topic, lambda record: replace(record, attributes={**record.attributes, **checked}))

    def _edit_record(self, topic: str, edit: Callable[[TopicRecord], TopicRecord]) -> None:
        """Change a topic's record (made when only `sns` events named the topic so far), WATCHed."""
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(keys.TOPICS)
                    record = edit(read_topic(pipe, topic) or TopicRecord(created_ms=now_ms()))
                    pipe.multi()
                    pipe.hset(keys.TOPICS, topic, record.to_redis())
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def tags(self, arn: str) -> dict[str, str]:
        topic = self._resource(arn)
        return dict((read_topic(self.redis, topic) or TopicRecord()).tags)

    def tag(self, arn: str, tags: Mapping[str, str]) -> None:
        topic = self._resource(arn)
        checked = checked_tags(tags)

        def add(record: TopicRecord) -> TopicRecord:
            merged = {**record.tags, **checked}
            if len(merged) > MAX_TAGS:
                raise SnsError(400, "TagLimitExceeded", f"Could not complete request: tag quota of per resource "
                                                        f"exceeded (at most {MAX_TAGS})")
            return replace(record, tags=merged)

        self._edit_record(topic, add)

    def untag(self, arn: str, tag_keys: Sequence[str]) -> None:
        topic = self._resource(arn)
        self._edit_record(topic, lambda record: replace(record, tags={
            key: value for key, value in record.tags.items() if key not in tag_keys}))

    def _resource(self, arn: str) -> str:
        """A topic named by TagResource and friends, whose missing topic is ResourceNotFound."""
        topic = self.topic_of(arn, "ResourceArn")
        if not self.exists(topic):
            raise SnsError(404, "ResourceNotFound", "Resource does not exist")
        return topic

    # -- subscriptions ---------------------------------------------------------------------

    def _spec_subscriptions(self, topic: str | None = None) -> list[Subscription]:
        found = []
        for function, index, event in self.catalog.events("sns"):
            spec = event.sns
            if spec is None or (topic is not None and spec.topic != topic):
                continue
            sid = str(uuid.uuid5(_SPEC_NAMESPACE, f"{function}:{index}:{spec.topic}"))
            found.append(Subscription(
                id=sid, topic=spec.topic, function=function, qualifier=spec.qualifier,
                filter_policy=None if spec.filter_policy is None else json.dumps(spec.filter_policy),
                filter_policy_scope=spec.filter_policy_scope, spec_index=index))
        return found

    def subscriptions(self, topic: str | None = None) -> list[Subscription]:
        """Every subscription of `topic` (of every topic when None), function.yaml's first, each group by id."""
        topics = [topic] if topic is not None else self.names()
        stored = [sub for name in topics for sub in sorted(read_subscriptions(self.redis, name), key=lambda s: s.id)]
        return sorted(self._spec_subscriptions(topic), key=lambda s: (s.topic, s.id)) + stored

    def _find(self, arn: str) -> Subscription:
        topic, _, sid = arn.rpartition(":")
        self.topic_of(topic, "SubscriptionArn")
        name = topic.rsplit(":", 1)[-1]
        for sub in self._spec_subscriptions(name):
            if sub.id == sid:
                return sub
        found = read_subscription(self.redis, name, sid)
        if found is None:
            raise not_found("Subscription does not exist")
        return found

    def _endpoint(self, endpoint: str | None) -> tuple[str, str]:
        """A function ARN or name (with an optional qualifier) -> (function, qualifier)."""
        if not endpoint:
            raise invalid("Endpoint: give the function's ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME) or name")
        given = endpoint
        if endpoint.startswith("arn:"):
            match = _FUNCTION_ARN.match(endpoint)
            if match is None:
                raise invalid(f"Endpoint: '{endpoint[:300]}' is not a function ARN "
                              "(arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER])")
            if (match["region"], match["account"]) != (self.config.region, self.config.account_id):
                raise invalid(f"Endpoint: the function ARN names region {match['region']}, account "
                              f"{match['account']}; this server is region {self.config.region}, account "
                              f"{self.config.account_id}")
            given = match["name"] + (f":{match['qualifier']}" if match["qualifier"] else "")
        try:
            return split_name(given)
        except ValueError as exc:
            raise invalid(f"Endpoint: {exc}") from None

    def function_arn(self, subscription: Subscription) -> str:
        base = f"arn:aws:lambda:{self.config.region}:{self.config.account_id}:function:{subscription.function}"
        return base if subscription.qualifier == LATEST else f"{base}:{subscription.qualifier}"

    def subscribe(self, topic_arn: str, protocol: str, endpoint: str | None,
                  attributes: Mapping[str, str] | None = None) -> str:
        """Subscribe a function (protocol `lambda`); the same function with the same attributes gives the same
        ARN again, as SNS does."""
        topic = self._existing_topic(topic_arn)
        if protocol != "lambda":
            raise invalid(f"Protocol: Lambent's topics deliver to functions only (protocol lambda); "
                          f"'{protocol[:40]}' is not supported")
        function, qualifier = self._endpoint(endpoint)
        policy, scope = subscription_attributes(attributes or {})
        wanted = Subscription(id=str(uuid.uuid4()), topic=topic, function=function, qualifier=qualifier,
                              filter_policy=policy, filter_policy_scope=scope)
        key = keys.topic_subscriptions(topic)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    for sub in read_subscriptions(pipe, topic):
                        if (sub.function, sub.qualifier) == (function, qualifier):
                            if (sub.filter_policy, sub.filter_policy_scope) != (policy, scope):
                                raise invalid("Attributes Reason: Subscription already exists with different "
                                              "attributes")
                            return self.subscription_arn(sub)
                    pipe.multi()
                    pipe.hset(key, wanted.id, wanted.to_redis())
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        if read_topic(self.redis, topic) is None:   # a topic only `sns` events named: it keeps its subscription
            self._edit_record(topic, lambda record: record)
        return self.subscription_arn(wanted)

    def unsubscribe(self, arn: str) -> None:
        sub = self._find(arn)
        self._refuse_spec(sub, "Unsubscribe")
        self.redis.hdel(keys.topic_subscriptions(sub.topic), sub.id)

    def _refuse_spec(self, sub: Subscription, action: str) -> None:
        if sub.spec_index is not None:
            raise invalid(f"SubscriptionArn: this subscription is events[{sub.spec_index}] (sns) of function "
                          f"{sub.function}'s function.yaml; {action} cannot change it: edit or remove that event "
                          "and deploy the function")

    def describe(self, sub: Subscription) -> dict[str, str]:
        """A subscription as ListSubscriptions shows it."""
        return {"SubscriptionArn": self.subscription_arn(sub), "Owner": self.config.account_id,
                "Protocol": "lambda", "Endpoint": self.function_arn(sub), "TopicArn": self.topic_arn(sub.topic)}

    def list_subscriptions(self, topic_arn: str | None, token: str | None) -> tuple[list[dict[str, str]], str | None]:
        topic = None if topic_arn is None else self._existing_topic(topic_arn)
        described = sorted((self.describe(sub) for sub in self.subscriptions(topic)),
                           key=lambda item: item["SubscriptionArn"])
        arns, following = _page([item["SubscriptionArn"] for item in described], token)
        wanted = set(arns)
        return [item for item in described if item["SubscriptionArn"] in wanted], following

    def subscription_attributes(self, arn: str) -> dict[str, str]:
        sub = self._find(arn)
        found = {**self.describe(sub), "ConfirmationWasAuthenticated": "true", "PendingConfirmation": "false",
                 "RawMessageDelivery": "false"}
        if sub.filter_policy is not None:
            found["FilterPolicy"] = sub.filter_policy
            found["FilterPolicyScope"] = sub.filter_policy_scope
        return found

    def set_subscription_attribute(self, arn: str, name: str, value: str | None) -> None:
        sub = self._find(arn)
        self._refuse_spec(sub, "SetSubscriptionAttributes")
        if name not in ("FilterPolicy", "FilterPolicyScope", "RawMessageDelivery"):
            raise invalid(f"AttributeName: Lambent's subscriptions take FilterPolicy, FilterPolicyScope and "
                          f"RawMessageDelivery (false); '{name[:80]}' is not supported")
        current = {"FilterPolicyScope": sub.filter_policy_scope, "FilterPolicy": sub.filter_policy or ""}
        current[name] = value or ""           # an empty value removes it (a FilterPolicy), as SNS
        policy, scope = subscription_attributes({key: val for key, val in current.items() if val})
        changed = Subscription(id=sub.id, topic=sub.topic, function=sub.function, qualifier=sub.qualifier,
                               filter_policy=policy, filter_policy_scope=scope)
        key = keys.topic_subscriptions(sub.topic)
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if not pipe.hexists(key, sub.id):
                    raise not_found("Subscription does not exist")
                pipe.multi()
                pipe.hset(key, sub.id, changed.to_redis())
                pipe.execute()
            except redis.WatchError:
                raise SnsError(400, "ConcurrentAccess", "the subscription changed meanwhile: try again") from None

    # -- publishing ------------------------------------------------------------------------

    def _key(self) -> bytes:
        """The signing secret (topics/records.py), read once per process."""
        if self._signing_key is None:
            self._signing_key = signing_key(self.redis)
        return self._signing_key

    def _base_url(self) -> str:
        host = self.config.gateway.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.config.gateway.port}"

    def prepare(self, topic: str, message: str, *, subject: str | None = None,
                attributes: Mapping[str, Mapping[str, Any]] | None = None, structure: str | None = None,
                trace_id: str | None = None) -> Prepared:
        """Check a publish to `topic` (a name) and build an invocation per matching subscription; write nothing."""
        if not self.exists(topic):
            raise not_found("Topic does not exist")
        delivered = delivered_message(message, structure)
        checked = checked_attributes(attributes or {})
        size = len(message.encode()) + sum(len(name.encode()) + len(item["Type"].encode()) + len(
            item["Value"].encode()) for name, item in checked.items())
        if size > MAX_MESSAGE_BYTES:
            raise invalid(f"Message too long: the message and its attributes are {size} bytes; at most "
                          f"{MAX_MESSAGE_BYTES}")
        if subject is not None:
            check_subject(subject)
        message_id = str(uuid.uuid4())
        body = body_of(delivered)
        now = now_ms()
        trace = trace_header(trace_id)
        invocations = []
        for sub in self.subscriptions(topic):
            try:
                if not _matches(sub, checked, body):
                    continue
            except FilterError as exc:      # a stored policy this version refuses: skipped, never a crash
                log.error("filter policy no longer valid; subscription skipped: %s", exc,
                          extra={"function": sub.function, "topic": topic})
                continue
            event = sns_event(subscription_arn=self.subscription_arn(sub), message_id=message_id,
                              topic_arn=self.topic_arn(topic), subject=subject, message=delivered, timestamp_ms=now,
                              attributes=checked, signing_key=self._key(), base_url=self._base_url())
            invocations.append(NewInvocation(function=sub.function, qualifier=sub.qualifier,
                                             payload=orjson.dumps(event), trigger="sns", trace_id=trace))
        return Prepared(message_id=message_id, invocations=invocations)

    def publish(self, topic: str, message: str, *, subject: str | None = None,
                attributes: Mapping[str, Mapping[str, Any]] | None = None, structure: str | None = None,
                trace_id: str | None = None) -> str:
        """Publish to `topic` (a name): when this returns the message id, every matching subscription's
        invocation is in Redis (one transaction)."""
        prepared = self.prepare(topic, message, subject=subject, attributes=attributes, structure=structure,
                                trace_id=trace_id)
        self.asyncq.accept_many(prepared.invocations)
        log.debug("published", extra={"topic": topic, "message_id": prepared.message_id,
                                       "deliveries": len(prepared.invocations)})
        return prepared.message_id

    def publish_batch(self, topic_arn: str, entries: Sequence[BatchEntry], *, trace_id: str | None = None
                      ) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
        """PublishBatch: (Successful, Failed) as SNS answers; the entries that passed are written in one
        transaction, each entry that did not is answered with its own error."""
        topic = self._existing_topic(topic_arn)
        if not entries:
            raise SnsError(400, "EmptyBatchRequest", "The batch request doesn't contain any entries")
        if len(entries) > MAX_BATCH:
            raise SnsError(400, "TooManyEntriesInBatchRequest",
                           f"The batch request contains more entries than permissible (at most {MAX_BATCH})")
        ids = [entry.id for entry in entries]
        if len(set(ids)) != len(ids):
            raise SnsError(400, "BatchEntryIdsNotDistinct", "Two or more batch entries in the request have the "
                                                            "same Id")
        for entry_id in ids:
            if not _BATCH_ID.match(entry_id):
                raise SnsError(400, "InvalidBatchEntryId", f"The Id of a batch entry in a batch request doesn't "
                               f"abide by the specification: '{entry_id[:100]}' (1-80 letters, digits, '-', '_')")
        total = sum(len(entry.message.encode()) for entry in entries)
        if total > MAX_MESSAGE_BYTES:
            raise SnsError(400, "BatchRequestTooLong", f"The length of all the messages put together is more than "
                                                       f"the limit ({total} > {MAX_MESSAGE_BYTES} bytes)")
        successful, failed, invocations = [], [], []
        for entry in entries:
            try:
                prepared = self.prepare(topic, entry.message, subject=entry.subject, attributes=entry.attributes,
                                        structure=entry.structure, trace_id=trace_id)
            except SnsError as exc:
                failed.append({"Id": entry.id, "Code": exc.code, "Message": exc.message, "SenderFault": True})
                continue
            successful.append({"Id": entry.id, "MessageId": prepared.message_id})
            invocations += prepared.invocations
        self.asyncq.accept_many(invocations)
        return successful, failed


def _page(arns: Iterable[str], token: str | None) -> tuple[list[str], str | None]:
    """One page of sorted ARNs after `token` (the last ARN of the page before, base64), and the next token."""
    after = ""
    if token:
        try:
            after = base64.urlsafe_b64decode(token.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            raise invalid("NextToken") from None
    rest = [arn for arn in sorted(arns) if arn > after]
    page = rest[:PAGE_SIZE]
    following = base64.urlsafe_b64encode(page[-1].encode()).decode() if len(rest) > PAGE_SIZE else None
    return page, following
