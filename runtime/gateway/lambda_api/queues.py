"""The Lambda control plane over the AWS API, event source mappings of SQS queues: a mapping is an `sqs` event of a
function's $LATEST (SqsEvent), polled by the `streams` role on the server's own queue server (config.yaml's
`sqs.endpoint_url`). sources.py routes each request here when the mapping or the request is an SQS one.

A function maps a queue once (FunctionSpec refuses a second `sqs` event on a queue name), so the UUID derives from
the function and the queue's name: it stays the same while the mapping lives, wherever it is in `events`, and a
mapping written in function.yaml has one too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request, Response

from ...config import Config
from ...functions.catalog import Version
from ...functions.filters import FilterError, compile_pattern
from ...functions.spec import SqsEvent
from ...streams.sqs_state import NOTHING_YET, SqsState, read_states
from ...wiring import GatewayServices
from ..common import services
from .shared import (answer, conflict, edit_latest, function_ref, invalid, mapped_qualifier, mapping_numbers, not_found,
                     report_batch_item_failures, resolve, stable_id, typed, violation)
from .shapes import for_request

# An SQS queue's ARN: arn:aws:sqs:REGION:ACCOUNT:NAME (the name is checked as function.yaml checks it).
SQS_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:sqs:(?P<region>[a-z0-9-]*):(?P<account>\d*):(?P<queue>.*)$")
_URL_ACCOUNT = re.compile(r"^\d{12}$")
# (request field, SqsEvent field as function.yaml writes it, model member, low, high) of a mapping's numbers.
_NUMBERS = (("BatchSize", "batch_size", "batchSize", 1, 10000),
            ("MaximumBatchingWindowInSeconds", "maximum_batching_window", "maximumBatchingWindowInSeconds", 0, 300))
_MAX_FILTERS = 5          # Lambda's filters per event source mapping (SqsEvent.filter_criteria holds as many)
# Parameters of other kinds of source, refused for a queue as Lambda refuses them, and why they have no use here.
_NOT_FOR_QUEUES = {
    "MaximumRetryAttempts": "a message is retried until the queue's redrive policy (maxReceiveCount) moves it to "
                            "the queue's own dead-letter queue",
    "MaximumRecordAgeInSeconds": "a message lives as long as the queue's retention period says",
    "BisectBatchOnFunctionError": "report the failed messages with FunctionResponseTypes ReportBatchItemFailures "
                                  "instead",
    "DestinationConfig": "a failing message goes to the queue's own dead-letter queue (its redrive policy)",
    "ParallelizationFactor": "use ScalingConfig.MaximumConcurrency",
    "TumblingWindowInSeconds": "a queue has no windows",
    "StartingPositionTimestamp": "a queue is read from its oldest visible message",
    "Topics": "give the queue's ARN as EventSourceArn",
    "Queues": "give the queue's ARN as EventSourceArn",
    "SourceAccessConfigurations": "the queue server's login is the server's (config.yaml's sqs.access_key_id and "
                                  "sqs.secret_access_key)",
    "SelfManagedEventSource": "give the queue's ARN as EventSourceArn",
    "SelfManagedKafkaEventSourceConfig": "a queue has no consumer group",
    "AmazonManagedKafkaEventSourceConfig": "a queue has no consumer group",
    "DocumentDBEventSourceConfig": "a queue is no change stream",
}
# Parameters Lambda takes for a queue and Lambent has no use for: refused when given a value.
_UNSUPPORTED = ("KMSKeyArn", "MetricsConfig", "LoggingConfig", "ProvisionedPollerConfig", "Tags")


@dataclass(frozen=True, kw_only=True)
class QueueMapping:
    """One SQS event source mapping: the `sqs` event at `index` of a function's $LATEST."""
    uuid: str
    version: Version
    index: int
    event: SqsEvent


def queue_uuid(function: str, queue_name: str) -> str:
    """A mapping's UUID: the function and the queue's name, which name the mapping as long as it lives."""
    return stable_id(f"sqs:{function}:{queue_name}")


def queue_mappings(svc: GatewayServices) -> list[QueueMapping]:
    """Every `sqs` event of every function's $LATEST (this node's catalog)."""
    found = []
    for name, index, event in svc.catalog.events("sqs"):
        version = svc.catalog.latest(name)
        if event.sqs is not None and version is not None:
            found.append(QueueMapping(uuid=queue_uuid(name, event.sqs.queue_name), version=version, index=index,
                                      event=event.sqs))
    return found


def queue_mappings_of(version: Version) -> list[QueueMapping]:
    """The SQS mappings of one $LATEST record (as a write just stored it)."""
    return [QueueMapping(uuid=queue_uuid(version.function, event.sqs.queue_name), version=version, index=index,
                         event=event.sqs) for index, event in enumerate(version.spec.events) if event.sqs is not None]


def find_queue_mapping(svc: GatewayServices, uuid: str) -> QueueMapping | None:
    return next((entry for entry in queue_mappings(svc) if entry.uuid == uuid), None)


def queue_place(function: str, events: list[dict[str, Any]], uuid: str) -> int | None:
    """Where the mapping `uuid` is in `events` as stored now (under the function's lock); None when it is gone."""
    for index, event in enumerate(events):
        if "sqs" in event and queue_uuid(function, SqsEvent.model_validate(event["sqs"]).queue_name) == uuid:
            return index
    return None


def sqs_region(config: Config) -> str:
    return config.sqs.region or config.region


def queue_arn(config: Config, event: SqsEvent) -> str:
    """The queue's ARN: the account is the one in a queue URL's path (http://host/ACCOUNT/NAME, as SQS and
    ElasticMQ write them), or the server's."""
    account = config.account_id
    if event.queue.startswith(("http://", "https://")):
        parts = event.queue.rstrip("/").split("/")
        if len(parts) >= 2 and _URL_ACCOUNT.match(parts[-2]):
            account = parts[-2]
    return f"arn:aws:sqs:{sqs_region(config)}:{account}:{event.queue_name}"


def is_queue_request(body: dict[str, Any]) -> bool:
    """Whether a CreateEventSourceMapping names an SQS queue (its EventSourceArn is an sqs ARN)."""
    source = body.get("EventSourceArn")
    return isinstance(source, str) and SQS_ARN.match(source) is not None


# -- shapes ---------------------------------------------------------------------------------


async def last_results(svc: GatewayServices, found: list[QueueMapping]) -> list[str]:
    """LastProcessingResult of each mapping, from the state its pollers write (read in one round trip)."""
    states = await read_states(svc.redis, [(entry.version.function, entry.event.queue_name) for entry in found],
                               fresh_s=svc.config.streams.state_interval_s * 5)
    return [_last_result(state) for state in states]


def _last_result(state: SqsState) -> str:
    """Lambda's LastProcessingResult, as the pollers record it (OK after a batch went well, PROBLEM: ... when
    something did not); a mapping with records received but no result recorded yet reads OK."""
    if state.last_result == NOTHING_YET and state.counts["received"] > 0:
        return "OK"
    return state.last_result


async def queue_shapes(request: Request, found: list[QueueMapping], *, state: str | None = None
                       ) -> list[dict[str, Any]]:
    """EventSourceMappingConfiguration of each mapping. `state`: what a write answers (Creating, Updating,
    Deleting), instead of the state a read sees."""
    svc = services(request)
    shapes = await for_request(request, [])
    results = await last_results(svc, found)
    return [shapes.sqs_event_source_mapping(entry.version, entry.event, uuid=entry.uuid,
                                            queue_arn=queue_arn(svc.config, entry.event), last_result=result,
                                            endpoint_url=svc.config.sqs.endpoint_url, state=state)
            for entry, result in zip(found, results)]


async def queue_shape(request: Request, mapping: QueueMapping, *, state: str | None = None) -> dict[str, Any]:
    return (await queue_shapes(request, [mapping], state=state))[0]


# -- the parameters of a write --------------------------------------------------------------


def _refuse_unsupported(body: dict[str, Any]) -> None:
    if body.get("StartingPosition") is not None:
        raise invalid("StartingPosition is not valid for SQS event sources: a queue is read from its oldest "
                      "visible message")
    for field, why in _NOT_FOR_QUEUES.items():
        if body.get(field) not in (None, {}, []):
            raise invalid(f"Unsupported {field} parameter for given event source mapping type ({why})")
    for field in _UNSUPPORTED:
        if body.get(field) not in (None, {}, []):
            raise invalid(f"Lambent's SQS event source mappings do not support {field}")
    typed(body, "Enabled", bool, "enabled")
    if body.get("Enabled") is False:
        raise invalid("Lambent's event source mappings are always enabled: to pause one, delete it, and create it "
                      "again to resume (the messages wait in the queue meanwhile)")


def _filters(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """FilterCriteria.Filters[].Pattern (JSON text each) -> function.yaml's filter_criteria; None when not given,
    [] when given empty (an update clears them)."""
    criteria = typed(body, "FilterCriteria", dict, "filterCriteria")
    if criteria is None:
        return None
    filters = criteria.get("Filters") or []
    if not isinstance(filters, list):
        raise violation(filters, "filterCriteria.filters", "Member must be of type list")
    if len(filters) > _MAX_FILTERS:
        raise invalid(f"FilterCriteria holds at most {_MAX_FILTERS} filters (Lambda's limit per event source "
                      f"mapping); this one has {len(filters)}: combine patterns with $or")
    patterns = []
    for index, item in enumerate(filters):
        pattern = item.get("Pattern") if isinstance(item, dict) else None
        if not isinstance(pattern, str) or not pattern.strip():
            raise invalid(f"Invalid filter pattern definition: FilterCriteria.Filters[{index}].Pattern must be a "
                          "pattern as JSON text")
        if len(pattern) > 4096:
            raise violation(pattern, f"filterCriteria.filters.{index + 1}.member.pattern",
                            "Member must have length less than or equal to 4096")
        try:
            compile_pattern(pattern)
        except FilterError as exc:
            raise invalid(str(exc)) from None
        patterns.append(orjson.loads(pattern))
    return patterns


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    """The SqsEvent fields (function.yaml's names) that the request sets."""
    _refuse_unsupported(body)
    changes: dict[str, Any] = mapping_numbers(body, _NUMBERS)
    reports = report_batch_item_failures(body)
    if reports is not None:
        changes["report_batch_item_failures"] = reports
    scaling = typed(body, "ScalingConfig", dict, "scalingConfig")
    if scaling is not None:        # {} takes the setting away: Lambent's default, 2
        concurrency = typed(scaling, "MaximumConcurrency", int, "scalingConfig.maximumConcurrency")
        if concurrency is not None and not 2 <= concurrency <= 1000:
            relation = "greater than or equal to 2" if concurrency < 2 else "less than or equal to 1000"
            raise violation(concurrency, "scalingConfig.maximumConcurrency", f"Member must have value {relation}")
        changes["maximum_concurrency"] = concurrency if concurrency is not None else 2
    filters = _filters(body)
    if filters is not None:
        changes["filter_criteria"] = filters
    return changes


def _check_batching(event: dict[str, Any]) -> None:
    """Lambda's rule for a batch above 10, on the mapping as it will be (an update may change either number)."""
    if event.get("batch_size", 10) > 10 and event.get("maximum_batching_window", 0) < 1:
        raise invalid("Maximum batch window in seconds must be greater than 0 if maximum batch size is greater "
                      "than 10")


def _queue_of(svc: GatewayServices, source: str) -> str:
    """The queue name of an SQS ARN that names a queue of this server's queue server."""
    match = SQS_ARN.match(source)
    assert match is not None                      # is_queue_request chose this path
    config, region = svc.config, sqs_region(svc.config)
    if match["region"] != region or match["account"] != config.account_id:
        where = config.sqs.endpoint_url or f"AWS SQS in {region}"
        raise invalid(f"Lambent polls the queues of one queue server ({where}, config.yaml's sqs.endpoint_url), "
                      f"in region {region} and account {config.account_id}: {source} is not one of them; give "
                      f"arn:aws:sqs:{region}:{config.account_id}:QUEUE")
    return match["queue"]


# -- writes ---------------------------------------------------------------------------------


async def create_queue_mapping(request: Request, body: dict[str, Any]) -> Response:
    """A new `sqs` event at the end of the function's events."""
    svc = services(request)
    named = typed(body, "FunctionName", str, "functionName")
    if named is None:
        raise violation(None, "functionName", "Member must not be null")
    ref = function_ref(svc, named)
    source = str(body["EventSourceArn"])
    queue = _queue_of(svc, source)
    event = {"queue": queue, "qualifier": ref.label, **_settings(body)}
    _check_batching(event)
    await resolve(svc, ref)                      # the function, and the version or alias it names, exist

    def add(data: dict[str, Any]) -> dict[str, Any]:
        events = list(data.get("events", []))
        for item in events:
            if "sqs" in item and (other := SqsEvent.model_validate(item["sqs"])).queue_name == queue:
                raise conflict(f"An event source mapping with SQS arn (\" {queue_arn(svc.config, other)} \") and "
                               f"function (\" {ref.name} \") already exists. Please update or delete the existing "
                               f"mapping with UUID {queue_uuid(ref.name, queue)}")
        events.append({"sqs": event})
        return {**data, "events": events}

    version = await edit_latest(svc, ref.name, add)
    created = next(entry for entry in queue_mappings_of(version) if entry.event.queue_name == queue)
    return answer(request, await queue_shape(request, created, state="Creating"), status=202)


async def update_queue_mapping(request: Request, found: QueueMapping, body: dict[str, Any]) -> Response:
    """Change the `sqs` event in place: its batching, responses, concurrency, filters, or the qualifier."""
    svc = services(request)
    name = found.version.function
    changes = _settings(body)
    qualifier = await mapped_qualifier(svc, body, name, found.uuid, " (the messages wait in the queue meanwhile)")
    if qualifier is not None:
        changes["qualifier"] = qualifier

    def update(data: dict[str, Any]) -> dict[str, Any]:
        events = list(data.get("events", []))
        index = queue_place(name, events, found.uuid)
        if index is None:
            raise not_found("The resource you requested does not exist.")
        queue = {**events[index]["sqs"], **changes}      # to_json's names: maximum_batching_window
        _check_batching(queue)
        events[index] = {"sqs": queue}
        return {**data, "events": events}

    version = await edit_latest(svc, name, update)
    updated = next(entry for entry in queue_mappings_of(version) if entry.uuid == found.uuid)
    return answer(request, await queue_shape(request, updated, state="Updating"), status=202)
