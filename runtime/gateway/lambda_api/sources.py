"""The Lambda control plane over the AWS API, event source mappings: Create, Update, Delete, Get and List
EventSourceMapping(s). A mapping is a `kafka` event of a function's $LATEST (KafkaEvent): a self-managed Apache
Kafka mapping on the server's own Kafka (kafka_bootstrap_servers), consumed by the `streams` role; or an `sqs` event
(SqsEvent), a queue of the server's queue server, whose mappings queues.py writes and shapes (the routes here send
an SQS request or mapping there).

Its UUID derives from its consumer group (KafkaEvent.group), so that it stays the same while the mapping lives:
a mapping made here gets its group written into its event, and removing an event pins the groups of the `kafka`
events after it first (their derived names follow their place, and a new group would lose their offsets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response

from ... import keys
from ...functions.catalog import Version
from ...functions.spec import KafkaEvent
from ...wiring import GatewayServices
from ..common import services
from .queues import (QueueMapping, create_queue_mapping, find_queue_mapping, is_queue_request, queue_mappings,
                     queue_arn, queue_place, queue_shape, queue_shapes, update_queue_mapping)
from .shared import (ApiError, answer, conflict, destination_of, edit_latest, function_arn, function_ref, invalid,
                     json_body, mapped_qualifier, mapping_numbers, marker_key, max_items, not_found, page, page_answer,
                     report_batch_item_failures, resolve, stable_id, typed, violation)
from .shapes import for_request

router = APIRouter(tags=["AWS Lambda API"])

_ARN_PATTERN = (r"arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\-])+:((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1})?:"
                r"(\d{12})?:(.*)")
_ARN = re.compile(_ARN_PATTERN)
_GROUP_PATTERN = r"[ a-zA-Z0-9-\/*:_+=.@-]*"
_GROUP = re.compile(rf"^{_GROUP_PATTERN}$")
# Parameters of the model that Lambent's Kafka mappings have no use for: refused when given a value.
_UNSUPPORTED = ("FilterCriteria", "KMSKeyArn", "MetricsConfig", "LoggingConfig", "ScalingConfig",
                "ParallelizationFactor", "StartingPositionTimestamp", "TumblingWindowInSeconds", "Queues",
                "SourceAccessConfigurations", "AmazonManagedKafkaEventSourceConfig", "DocumentDBEventSourceConfig",
                "ProvisionedPollerConfig", "Tags")
# (request field, KafkaEvent field, model member, low, high) of the numbers a mapping takes.
_NUMBERS = (("BatchSize", "batch_size", "batchSize", 1, 10000),
            ("MaximumBatchingWindowInSeconds", "batch_window", "maximumBatchingWindowInSeconds", 0, 300),
            ("MaximumRetryAttempts", "max_retry_attempts", "maximumRetryAttempts", -1, 10000),
            ("MaximumRecordAgeInSeconds", "max_record_age", "maximumRecordAgeInSeconds", -1, 604800))
_DEFAULT_WINDOW_S = 0.5       # Lambda's MaximumBatchingWindowInSeconds 0 means its default of 500 ms for Kafka


@dataclass(frozen=True, kw_only=True)
class Mapping:
    """One event source mapping: the `kafka` event at `index` of a function's $LATEST."""
    uuid: str
    version: Version
    index: int
    event: KafkaEvent

    @property
    def group(self) -> str:
        return self.event.group(self.version.function, self.index)


def mapping_uuid(function: str, index: int, event: KafkaEvent) -> str:
    """A mapping's UUID: derived from its consumer group, which names the mapping as long as it lives."""
    return stable_id(event.group(function, index))


def mappings(svc: GatewayServices) -> list[Mapping]:
    """Every `kafka` event of every function's $LATEST (this node's catalog): Lambent's event source mappings."""
    found = []
    for name, index, event in svc.catalog.events("kafka"):
        version = svc.catalog.latest(name)
        if event.kafka is not None and version is not None:
            found.append(Mapping(uuid=mapping_uuid(name, index, event.kafka), version=version, index=index,
                                 event=event.kafka))
    return found


def without_event(function: str, events: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """`events` (function.yaml's, as JSON) without the one at `index`; every `kafka` event after it keeps the
    consumer group it has (written into it when derived from its place, which moves)."""
    kept = []
    for place, event in enumerate(events):
        if place == index:
            continue
        if place > index and "kafka" in event and not event["kafka"].get("consumer_group"):
            group = KafkaEvent.model_validate(event["kafka"]).group(function, place)
            event = {**event, "kafka": {**event["kafka"], "consumer_group": group}}
        kept.append(event)
    return kept


def _uuid(mapping: str) -> str:
    if len(mapping) != 36:
        relation = "greater" if len(mapping) < 36 else "less"
        raise violation(mapping, "UUID", f"Member must have length {relation} than or equal to 36")
    return mapping.lower()


def _find(svc: GatewayServices, mapping: str) -> Mapping | QueueMapping:
    """A mapping of either kind by its UUID."""
    wanted = _uuid(mapping)
    found = next((entry for entry in mappings(svc) if entry.uuid == wanted), None) or find_queue_mapping(svc, wanted)
    if found is None:
        raise not_found("The resource you requested does not exist.")
    return found


def _place(function: str, events: list[dict[str, Any]], uuid: str) -> int:
    """Where the mapping `uuid` is in `events` as stored now (under the function's lock)."""
    for index, event in enumerate(events):
        if "kafka" in event and mapping_uuid(function, index, KafkaEvent.model_validate(event["kafka"])) == uuid:
            return index
    raise not_found("The resource you requested does not exist.")


async def _shape(request: Request, mapping: Mapping, *, state: str | None = None) -> dict[str, Any]:
    shapes = await for_request(request, [])
    return shapes.event_source_mapping(mapping.version, mapping.index, mapping.event,
                                       services(request).config.kafka_bootstrap_servers, state=state)


# -- the parameters of a write --------------------------------------------------------------


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for field in _UNSUPPORTED:
        if body.get(field) not in (None, {}, []):
            raise invalid(f"Lambent's event source mappings do not support {field}: they consume the server's "
                          "own Kafka with its login, every record of the topic, one consumer per partition")
    if body.get("Enabled") is False:
        raise invalid("Lambent's event source mappings are always enabled: to pause one, delete it, and create it "
                      "again with the same SelfManagedKafkaEventSourceConfig.ConsumerGroupId to resume from where "
                      "it stopped")


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    """The KafkaEvent fields (function.yaml's names) that the request sets; None clears `on_failure`."""
    typed(body, "Enabled", bool, "enabled")
    changes: dict[str, Any] = mapping_numbers(body, _NUMBERS)
    if changes.get("batch_window") == 0:
        changes["batch_window"] = _DEFAULT_WINDOW_S
    bisect = typed(body, "BisectBatchOnFunctionError", bool, "bisectBatchOnFunctionError")
    if bisect is not None:
        changes["bisect_on_error"] = bisect
    reports = report_batch_item_failures(body)
    if reports is not None:
        changes["report_batch_item_failures"] = reports
    destinations = typed(body, "DestinationConfig", dict, "destinationConfig")
    if destinations is not None:
        if destinations.get("OnSuccess") not in (None, {}):
            raise invalid("Unsupported DestinationConfig parameter for given event source mapping type: "
                          "OnSuccess (Lambda and Lambent send only a mapping's failed batches to a destination)")
        failure = destinations.get("OnFailure")
        if failure is not None:
            changes["on_failure"] = destination_of(failure, "destinationConfig.onFailure")
    return changes


def _group(body: dict[str, Any]) -> str | None:
    """SelfManagedKafkaEventSourceConfig.ConsumerGroupId, checked; None when not given."""
    config = typed(body, "SelfManagedKafkaEventSourceConfig", dict, "selfManagedKafkaEventSourceConfig") or {}
    if config.get("SchemaRegistryConfig"):
        raise invalid("Lambent's event source mappings have no schema registry: the event carries each record's "
                      "key and value as Kafka holds them (base64)")
    if config.get("ConsumptionMode") not in (None, "Stream"):
        raise invalid("Lambent consumes a topic in Stream mode only (a consumer group, partition order)")
    group = config.get("ConsumerGroupId")
    if group is None:
        return None
    if not isinstance(group, str) or not 1 <= len(group) <= 200 or not _GROUP.match(group):
        raise violation(group, "selfManagedKafkaEventSourceConfig.consumerGroupId",
                        f"Member must satisfy regular expression pattern: {_GROUP_PATTERN}")
    return group


def _check_source(svc: GatewayServices, body: dict[str, Any]) -> None:
    """A mapping reads the server's own Kafka: the request must name it (or some of its brokers)."""
    arn = typed(body, "EventSourceArn", str, "eventSourceArn")
    own = [server.strip() for server in (svc.config.kafka_bootstrap_servers or "").split(",") if server.strip()]
    how = (f"give SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS {own} (config.yaml's "
           "kafka_bootstrap_servers)" if own else "this server has no Kafka: set kafka_bootstrap_servers in its "
                                                   "config.yaml")
    if arn is not None:
        raise invalid(f"Lambent's event source mappings consume its own Kafka or an SQS queue, not {arn} (Amazon "
                      f"MSK, Kinesis and DynamoDB sources are not supported): {how}")
    source = typed(body, "SelfManagedEventSource", dict, "selfManagedEventSource") or {}
    endpoints = source.get("Endpoints")
    named = endpoints.get("KAFKA_BOOTSTRAP_SERVERS") if isinstance(endpoints, dict) else None
    if not own or not isinstance(named, list) or not named or not set(named) <= set(own):
        raise invalid(f"Lambent consumes its own Kafka: {how}")


# -- reads ----------------------------------------------------------------------------------


@router.get("/2015-03-31/event-source-mappings", summary="ListEventSourceMappings")
async def list_event_source_mappings(request: Request) -> Response:
    svc = services(request)
    source = request.query_params.get("EventSourceArn")
    if source is not None and not _ARN.fullmatch(source):
        raise violation(source, "eventSourceArn", f"Member must satisfy regular expression pattern: {_ARN_PATTERN}")
    named = request.query_params.get("FunctionName")
    ref = function_ref(svc, named) if named is not None else None
    size = max_items(request, limit=10000) or 100

    def named_by(entry: Mapping | QueueMapping) -> bool:
        return ref is None or (entry.version.function == ref.name
                               and (ref.qualifier is None or entry.event.qualifier == ref.qualifier))

    kinds: list[Mapping | QueueMapping] = [
        *(entry for entry in mappings(svc) if source is None),  # a self-managed Kafka mapping has no source ARN
        *(entry for entry in queue_mappings(svc) if source is None or queue_arn(svc.config, entry.event) == source)]
    found = [(f"{entry.version.function}\0{entry.index:05d}", entry) for entry in kinds if named_by(entry)]
    chosen, marker = page(sorted(found, key=lambda pair: pair[0]), lambda pair: pair[0],
                          start=marker_key(request), size=size)
    queues = iter(await queue_shapes(request, [entry for _, entry in chosen if isinstance(entry, QueueMapping)]))
    shown = [next(queues) if isinstance(entry, QueueMapping) else await _shape(request, entry) for _, entry in chosen]
    return page_answer(request, "EventSourceMappings", shown, marker)


@router.get("/2015-03-31/event-source-mappings/{mapping}", summary="GetEventSourceMapping")
async def get_event_source_mapping(mapping: str, request: Request) -> Response:
    found = _find(services(request), mapping)
    if isinstance(found, QueueMapping):
        return answer(request, await queue_shape(request, found))
    return answer(request, await _shape(request, found))


# -- writes ---------------------------------------------------------------------------------


@router.post("/2015-03-31/event-source-mappings", summary="CreateEventSourceMapping")
async def create_event_source_mapping(request: Request) -> Response:
    """A new `kafka` event at the end of the function's events, with its consumer group written into it (an `sqs`
    event when the source is a queue: queues.py)."""
    svc = services(request)
    body = await json_body(request)
    if is_queue_request(body):
        return await create_queue_mapping(request, body)
    named = typed(body, "FunctionName", str, "functionName")
    if named is None:
        raise violation(None, "functionName", "Member must not be null")
    ref = function_ref(svc, named)
    _check_source(svc, body)
    _refuse_unsupported(body)
    settings = _settings(body)
    topics = typed(body, "Topics", list, "topics")
    if not topics:
        raise invalid("Topics is required for a self-managed Apache Kafka event source: the one topic to consume")
    if len(topics) > 1:
        raise violation(topics, "topics", "Member must have length less than or equal to 1")
    position = typed(body, "StartingPosition", str, "startingPosition")
    if position == "AT_TIMESTAMP":
        raise invalid("Lambent starts a mapping at TRIM_HORIZON or LATEST: AT_TIMESTAMP is not supported")
    if position not in ("TRIM_HORIZON", "LATEST"):
        if position is not None:
            raise violation(position, "startingPosition",
                            "Member must satisfy enum value set: [TRIM_HORIZON, LATEST, AT_TIMESTAMP]")
        raise invalid("StartingPosition is required for a self-managed Apache Kafka event source: TRIM_HORIZON "
                      "or LATEST")
    asked = _group(body)
    await resolve(svc, ref)                      # the function, and the version or alias it names, exist
    event = {"topic": topics[0], "starting_position": position, "qualifier": ref.label,
             **{key: value for key, value in settings.items() if value is not None}}
    groups = {entry.group: entry for entry in mappings(svc) if entry.version.function != ref.name}
    chosen = ""

    def add(data: dict[str, Any]) -> dict[str, Any]:
        nonlocal chosen
        events = list(data.get("events", []))
        mine = {KafkaEvent.model_validate(item["kafka"]).group(ref.name, index): item["kafka"]
                for index, item in enumerate(events) if "kafka" in item}
        for group, other in mine.items():
            if other["topic"] == event["topic"] and other.get("qualifier", "$LATEST") == ref.label:
                raise conflict(f"An event source mapping with function ({function_arn(svc, ref.name, ref.qualifier)})"
                               f" and topic ({event['topic']}) already exists. Please update or delete the existing "
                               f"mapping with UUID {stable_id(group)}")
        taken = groups.keys() | mine.keys()
        if asked is not None:
            if asked in taken:
                raise conflict(f"The consumer group {asked} is in use by the event source mapping "
                               f"{stable_id(asked)}: a consumer group belongs to one mapping")
            chosen = asked
        else:
            place = len(events)          # its derived name, unless a pinned group took it already
            while (chosen := keys.stream_group(ref.name, place, event["topic"])) in taken:
                place += 1
        events.append({"kafka": {**event, "consumer_group": chosen}})
        return {**data, "events": events}

    version = await edit_latest(svc, ref.name, add)
    created = next(entry for entry in mappings_of(version) if entry.group == chosen)
    return answer(request, await _shape(request, created, state="Creating"), status=202)


def mappings_of(version: Version) -> list[Mapping]:
    """The mappings of one $LATEST record (as a write just stored it)."""
    return [Mapping(uuid=mapping_uuid(version.function, index, event.kafka), version=version, index=index,
                    event=event.kafka) for index, event in enumerate(version.spec.events) if event.kafka is not None]


@router.put("/2015-03-31/event-source-mappings/{mapping}", summary="UpdateEventSourceMapping")
async def update_event_source_mapping(mapping: str, request: Request) -> Response:
    svc = services(request)
    found = _find(svc, mapping)
    name = found.version.function
    body = await json_body(request)
    if isinstance(found, QueueMapping):
        return await update_queue_mapping(request, found, body)
    _refuse_unsupported(body)
    changes = _settings(body)
    asked = _group(body)
    if asked is not None and asked != found.group:
        raise invalid(f"The consumer group of a mapping cannot be changed (it is {found.group}): delete the "
                      "mapping and create one with the new ConsumerGroupId")
    qualifier = await mapped_qualifier(svc, body, name, found.uuid, " with SelfManagedKafkaEventSourceConfig."
                                       f"ConsumerGroupId {found.group} to carry on from its offsets")
    if qualifier is not None:
        changes["qualifier"] = qualifier

    def update(data: dict[str, Any]) -> dict[str, Any]:
        events = list(data.get("events", []))
        index = _place(name, events, found.uuid)
        kafka = {**events[index]["kafka"], **changes}
        if kafka.get("on_failure") is None:
            kafka.pop("on_failure", None)
        events[index] = {"kafka": kafka}
        return {**data, "events": events}

    version = await edit_latest(svc, name, update)
    updated = next(entry for entry in mappings_of(version) if entry.uuid == found.uuid)
    return answer(request, await _shape(request, updated, state="Updating"), status=202)


@router.delete("/2015-03-31/event-source-mappings/{mapping}", summary="DeleteEventSourceMapping")
async def delete_event_source_mapping(mapping: str, request: Request) -> Response:
    """Remove the `kafka` or `sqs` event; the consumers stop. A consumer group stays in Kafka with its offsets, a
    queue keeps its messages."""
    svc = services(request)
    found = _find(svc, mapping)
    name = found.version.function

    def place(events: list[dict[str, Any]]) -> int:
        if not isinstance(found, QueueMapping):
            return _place(name, events, found.uuid)
        index = queue_place(name, events, found.uuid)
        if index is None:
            raise not_found("The resource you requested does not exist.")
        return index

    def remove(data: dict[str, Any]) -> dict[str, Any]:
        events = list(data.get("events", []))
        return {**data, "events": without_event(name, events, place(events))}

    try:
        await edit_latest(svc, name, remove)
    except ApiError as exc:
        if exc.status == 404:        # the function went, or the mapping went meanwhile
            raise not_found("The resource you requested does not exist.") from None
        raise
    if isinstance(found, QueueMapping):
        return answer(request, await queue_shape(request, found, state="Deleting"), status=202)
    return answer(request, await _shape(request, found, state="Deleting"), status=202)
