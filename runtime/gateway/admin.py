"""Reading the catalog: `GET /functions`, `GET /functions/{name}`, `GET /healthz`."""

from __future__ import annotations

import time
from typing import Any

import orjson

from fastapi import APIRouter, Request, Response

from ..functions.catalog import Catalog, Version
from ..observability.outage import UNREACHABLE
from ..streams import partition_state
from ..streams.sqs_state import read_states
from .common import bad_name, latest_or_error, request_id, services
from .errors import error

router = APIRouter()


def _summary(version: Version, catalog: Catalog) -> dict[str, Any]:
    """A version; for $LATEST, `version` is the newest published number (None before the first publish)."""
    spec = version.spec
    number = catalog.newest_published(version.function) if version.is_latest else version.number
    return {"name": version.function, "version": number, "handler": spec.handler,
            "description": spec.description, "timeout": spec.timeout_s, "memory_mb": spec.memory_mb,
            "reserved_concurrency": spec.reserved_concurrency, "triggers": spec.triggers,
            "code_hash": version.code_hash, "created": version.created}


@router.get("/functions", tags=["admin"], summary="List functions")
async def list_functions(request: Request) -> dict[str, Any]:
    catalog = services(request).catalog
    return {"functions": [{**_summary(version, catalog), "aliases": catalog.aliases(name)} for name in catalog.names()
                          if (version := catalog.latest(name)) is not None]}


@router.get("/functions/{name}", tags=["admin"], summary="One function: configuration, versions, aliases, state")
async def get_function(name: str, request: Request) -> Any:
    svc = services(request)
    latest = latest_or_error(request, name)
    if isinstance(latest, Response):
        return latest
    node = svc.executor.state(name)
    configuration = latest.spec.to_json()
    if configuration.get("environment") and not request.scope.get("state", {}).get("may_admin"):
        # Environment values are often secrets: shown to whoever may run admin operations, named to the rest.
        configuration["environment"] = {variable: "***" for variable in configuration["environment"]}
    return {**_summary(latest, svc.catalog), "arn": svc.executor.arn(name), "configuration": configuration,
            "versions": [_summary(version, svc.catalog) for version in await svc.catalog.list_versions(name)],
            "aliases": svc.catalog.aliases(name),
            "state": "Failed" if node["last_init_error"] else "Active", "node": node}


@router.delete("/functions/{name}", tags=["admin"],
               summary="Delete a function with its versions, aliases, schedules and stream consumers")
async def delete_function(name: str, request: Request) -> Any:
    svc = services(request)
    if (bad := bad_name(request, name)) is not None:
        return bad
    if not await svc.catalog.delete(name):
        return error(404, "ResourceNotFound", f"Function not found: {name}", request_id=request_id(request))
    return {"deleted": name}


@router.get("/functions/{name}/streams", tags=["admin"],
            summary="A function's event source mappings: Kafka (each partition's state) and SQS (counters, in flight)")
async def get_streams(name: str, request: Request) -> Any:
    svc = services(request)
    latest = latest_or_error(request, name)
    if isinstance(latest, Response):
        return latest
    now_ms = int(time.time() * 1000)
    fresh_ms = int(svc.config.streams.state_interval_s * 5000)
    mappings = []
    for index, event in enumerate(latest.spec.events):
        if event.kafka is None:
            continue
        states = await partition_state.aread(svc.redis, name, index)
        partitions = [{**state.to_json(), "stale": not state.is_fresh(now_ms, fresh_ms)} for state in states]
        mappings.append({"mapping": index, "topic": event.kafka.topic,
                         "consumerGroup": event.kafka.group(name, index),
                         "configuration": event.kafka.model_dump(mode="json", by_alias=True),
                         "partitions": partitions,
                         "lag": sum(state.lag or 0 for state in states if state.is_fresh(now_ms, fresh_ms))})
    sqs_events = [(index, event.sqs) for index, event in enumerate(latest.spec.events) if event.sqs is not None]
    sqs_states = await read_states(svc.redis, [(name, sqs.queue_name) for _, sqs in sqs_events],
                                   fresh_s=svc.config.streams.state_interval_s * 5)
    queues = [{"mapping": index, "queue": sqs.queue, "configuration": sqs.model_dump(mode="json", by_alias=True),
               **state.to_json()} for (index, sqs), state in zip(sqs_events, sqs_states)]
    return {"function": name, "bootstrapServers": svc.config.kafka_bootstrap_servers, "mappings": mappings,
            "sqsEndpoint": svc.config.sqs.endpoint_url, "queues": queues}


@router.get("/healthz", tags=["admin"], summary="Liveness and Redis reachability")
async def healthz(request: Request) -> Response:
    """200 while the process serves, Redis or not: `status` is `degraded` when Redis is not reachable.

    A gateway without Redis still runs warm sync invocations, and every gateway of a cluster shares the one
    Redis: a load balancer that took them out on a 503 would stop those too and gain nothing, and a liveness
    probe would restart a process that cannot start without Redis. Alert on `status` or `lambent_redis_up`."""
    svc = services(request)
    health = svc.health
    if not health.down:
        try:
            await svc.redis.ping()       # bounded by the gateway's Redis timeouts
        except UNREACHABLE as exc:
            health.failed(exc)
    answer: dict[str, Any] = {"status": "ok", "isolation": svc.executor.isolation.describe(),
                              "redis": {"reachable": True}}
    if health.down:
        answer["status"] = "degraded"
        answer["redis"] = {"reachable": False, "url": health.url, "error": health.reason,
                           "downSince": health.down_since, "message": health.message()}
    return Response(orjson.dumps(answer), media_type="application/json")
