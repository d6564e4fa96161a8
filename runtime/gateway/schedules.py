"""`GET /schedules`: every schedule with its expression, time zone, next fire times and last outcome."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request

from .. import keys
from ..asyncq.store import text
from ..events.destination import iso_ms
from ..functions.expressions import next_times, parse
from .common import services

router = APIRouter()


@router.get("/schedules", tags=["admin"], summary="Every schedule: expression, time zone, next fires, last fire")
async def list_schedules(request: Request, count: int = 3) -> dict[str, Any]:
    svc = services(request)
    now = datetime.now(timezone.utc)
    found = []
    for name in svc.catalog.names():
        latest = svc.catalog.latest(name)
        if latest is None:
            continue
        for index, event in enumerate(latest.spec.events):
            if event.schedule is None:
                continue
            schedule = event.schedule
            upcoming = next_times(parse(schedule.expression, schedule.timezone), now, max(0, min(count, 20)))
            last_raw = await svc.redis.hgetall(keys.schedule_last(name, index))
            stats_raw = await svc.redis.hgetall(keys.schedule_stats(name, index))
            last = {text(key): text(value) for key, value in last_raw.items()}
            answer: dict[str, Any] = {
                "function": name, "index": index, "expression": schedule.expression, "timezone": schedule.timezone,
                "enabled": schedule.enabled, "input": schedule.input,
                "next": [moment.strftime("%Y-%m-%dT%H:%M:%SZ") for moment in upcoming] if schedule.enabled else [],
                "stats": {text(key): int(value) for key, value in stats_raw.items()}, "last": None}
            if last:
                status = None
                if last.get("request_id"):
                    raw = await svc.redis.hget(keys.invocation(last["request_id"]), "status")
                    status = text(raw) if raw else None
                answer["last"] = {"scheduled": iso_ms(int(last["scheduled_ms"])), "firedAt": iso_ms(int(last["fired_ms"])),
                                  "lateMs": int(last["late_ms"]), "requestId": last.get("request_id") or None,
                                  "outcome": last.get("outcome"), "status": status, "by": last.get("by")}
            found.append(answer)
    return {"schedules": found}
