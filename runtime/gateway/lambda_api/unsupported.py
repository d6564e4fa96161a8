"""What the gateway answers for a Lambda API operation it does not serve, instead of `404 no route`.

Any request on the Lambda API's paths (they start with the API version, a date: /2015-03-31/, /2018-10-31/,
/2021-10-31/, ...) that no route takes gets AWS's error shape, which botocore turns into a ClientError:

- an operation of the API model that Lambent does not serve: 501 `UnsupportedOperationException`, naming the
  operation. (LocalStack answers 501 too, with the code InternalFailure; the code here says what happened, and
  botocore retries no 501 in any retry mode, so the caller learns at once.)
- a method and path that are no operation of the model: 404 `UnknownOperationException`.

The operations are read from botocore's own Lambda model (boto3 is a dependency of the server: Lambda's runtime
ships it), so the list of what exists follows the installed botocore.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from fastapi import Request, Response

from ..common import request_id
from ..errors import aws_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Operation:
    name: str
    method: str
    path: re.Pattern[str]
    query: tuple[str, str] | None      # a query parameter that tells two operations on one path apart


@functools.cache
def _operations() -> tuple[_Operation, ...]:
    """The Lambda model's operations as (name, method, path pattern); none when botocore cannot load it."""
    try:
        from botocore.loaders import Loader

        model = Loader().load_service_model("lambda", "service-2")
    except Exception:       # any failure of an optional nicety: answers then name no operation
        log.warning("botocore's Lambda model could not be loaded: unsupported operations are not named",
                    exc_info=True)
        return ()
    found = []
    for name, operation in model["operations"].items():
        uri, _, query = operation["http"]["requestUri"].partition("?")
        pattern = re.sub(r"\\\{[^}]+\\\+\\\}", ".+", re.escape(uri))          # {Greedy+}
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)                  # {Label}
        key, _, value = query.partition("=")
        found.append(_Operation(name=name, method=operation["http"]["method"], path=re.compile(pattern + "/?"),
                                query=(key, value) if key else None))
    return tuple(found)


def operation_of(method: str, path: str, query: dict[str, str]) -> str | None:
    """The model's name of the operation a request is, or None."""
    matches = [op for op in _operations() if op.method == method and op.path.fullmatch(path)]
    specific = [op for op in matches if op.query is not None and query.get(op.query[0]) == op.query[1]]
    plain = [op for op in matches if op.query is None]
    chosen = specific or plain
    return chosen[0].name if chosen else None


def answer(request: Request) -> Response:
    """AWS's answer to a request on the Lambda API's paths that no route of the gateway takes."""
    method, path = request.method, request.url.path
    # Matched as sent: an ARN in a path label has its slashes percent-encoded there.
    raw = request.scope.get("raw_path") or path.encode()
    name = operation_of(method, raw.decode("latin-1"), dict(request.query_params))
    rid = request_id(request)
    log.info("Lambda API operation not served", extra={"operation": name, "method": method, "path": path})
    if name is None:
        return aws_error(404, "UnknownOperationException", f"{method} {path} is no operation of the Lambda API",
                         request_id=rid)
    return aws_error(501, "UnsupportedOperationException",
                     f"Lambent does not support the Lambda operation {name} ({method} {path}); the operations it "
                     "supports are listed in its README, \"Using AWS tools\"", request_id=rid)
