"""Error answers: Lambent's own JSON shape, and AWS's shape on the AWS Lambda API's paths."""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import Response


_AWS_API = re.compile(r"/\d{4}-\d{2}-\d{2}/")


def is_aws_api(path: str) -> bool:
    """Whether a path is the AWS Lambda API's: every operation's path starts with its API version, a date."""
    return _AWS_API.match(path) is not None


def error(status: int, code: str, message: str, *, request_id: str, **extra: Any) -> Response:
    """`{"error": code, "message": ..., "requestId": ...}`: says what was wrong and what to do."""
    body = {"error": code, "message": message, "requestId": request_id, **extra}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def aws_error(status: int, code: str, message: str, *, request_id: str, **extra: Any) -> Response:
    """As the Lambda service answers: `x-amzn-ErrorType` names the exception, botocore reads it."""
    body = {"Type": "User", "message": message, **extra}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={"x-amzn-ErrorType": code, "x-amzn-RequestId": request_id})


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit
