"""Lambda's destination record: what on_success / on_failure destinations and the DLQ receive."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

CONDITION_SUCCESS = "Success"
CONDITION_RETRIES_EXHAUSTED = "RetriesExhausted"
CONDITION_EVENT_AGE_EXCEEDED = "EventAgeExceeded"


def iso_ms(epoch_ms: int) -> str:
    """`2019-11-14T18:16:05.568Z`, as Lambda writes timestamps."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def destination_record(*, request_id: str, function_arn: str, condition: str, invoke_count: int,
                       request_payload: Any, executed_version: str | None, function_error: str | None,
                       response_payload: Any, now_ms: int) -> dict[str, Any]:
    """The record, field for field as Lambda's (`responseContext` only when the function ran)."""
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": iso_ms(now_ms),
        "requestContext": {"requestId": request_id, "functionArn": function_arn, "condition": condition,
                           "approximateInvokeCount": invoke_count},
        "requestPayload": request_payload,
    }
    if executed_version is not None:
        context: dict[str, Any] = {"statusCode": 200, "executedVersion": executed_version}
        if function_error:
            context["functionError"] = function_error
        record["responseContext"] = context
        record["responsePayload"] = response_payload
    return record
