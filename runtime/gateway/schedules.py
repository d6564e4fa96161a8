"""`GET /schedules`: every schedule with its expression, time zone, next fire times and last outcome."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request

from ..events.destination import iso_ms
from ..functions.expressions import next_times, parse
from ..scheduler.state import read_state
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
            state = await read_state(svc.redis, function=name, index=index)
            answer: dict[str, Any] = {
                "function": name, "index": index, "expression": schedule.expression, "timezone": schedule.timezone,
                "enabled": schedule.enabled, "input": schedule.input,
                "next": [moment.strftime("%Y-%m-%dT%H:%M:%SZ") for moment in upcoming] if schedule.enabled else [],
                "stats": state.counters.counts, "last": None}
            if (last := state.last) is not None:
                answer["last"] = {"scheduled": iso_ms(last.scheduled_ms), "firedAt": iso_ms(last.fired_ms),
                                  "lateMs": last.late_ms, "requestId": last.request_id, "outcome": last.outcome,
                                  "status": state.status, "by": last.by}
            found.append(answer)
    return {"schedules": found}
