"""The one flow of an Invoke request, shared by Lambent's invoke route (invoke.py) and the AWS Lambda API (aws.py).

Both take the function's name and qualifier from the request, read the event within the payload limit, check it
is JSON, resolve the target, then check it (DryRun), queue it (Event) or run it (RequestResponse, with the
caller's trace header). What differs is how each API reads its request and words its answers: an `InvokeApi`
subclass says that, and its instance is the route's body (hot.py calls it, and so does the FastAPI route that
documents it). On the hot path: no await and no copy beyond what the flow itself needs.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from fastapi import Request, Response

from ..events.trace import trace_header
from ..executor import Busy, InvocationResult
from ..functions.catalog import NotFound, Target
from ..wiring import GatewayServices
from .asyncapi import accept
from .common import header, json_problem, read_body, request_id, services
from .errors import BodyTooLarge

_INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")


class Ref(NamedTuple):
    """What a request names: the function, the qualifier to resolve, and whether the caller wrote a qualifier
    (Lambda then keeps it in the invoked ARN, $LATEST included)."""
    function: str
    qualifier: str
    named: bool


class Refused(Exception):
    """Raised by a hook that reads the request (`ref`, `client_context`): the flow stops with this answer."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class InvokeApi(ABC):
    """One invoke API: the header naming the invocation type, how its request names the target, and its answers."""

    type_header: bytes          # the invocation type's header, in lower case

    async def __call__(self, request: Request) -> Response:
        rid = request_id(request)
        svc = services(request)
        invocation_type = header(request, self.type_header, "RequestResponse")
        if invocation_type not in _INVOCATION_TYPES:
            return self.bad_type(invocation_type, rid)
        try:
            ref = self.ref(request, svc, rid)
        except Refused as refused:
            return refused.response
        limit = (svc.config.gateway.async_payload_limit_bytes if invocation_type == "Event"
                 else svc.config.gateway.sync_payload_limit_bytes)
        try:
            body = await read_body(request, limit)
        except BodyTooLarge as exc:
            return self.too_large(exc, rid)
        if (problem := json_problem(body)) is not None:
            return self.bad_json(problem, rid)
        try:
            client_context = self.client_context(request, rid)
        except Refused as refused:
            return refused.response
        try:
            target = await svc.catalog.resolve(ref.function, ref.qualifier)
        except NotFound as exc:
            return self.not_found(exc, svc, ref, rid)
        if ref.named:
            target = dataclasses.replace(target, named=True)
        if invocation_type == "DryRun":
            return self.dry_run(target, rid)
        if invocation_type == "Event":
            # No version header: the worker resolves the qualifier when it runs the event (an alias may move first).
            trace = await accept(svc, target, body, rid, header(request, b"x-amzn-trace-id"))
            return self.accepted(trace, rid)
        trace = trace_header(header(request, b"x-amzn-trace-id"))
        try:
            # json_problem takes a blank body (whitespace only) as `{}`: send that, not the blank bytes.
            result = await svc.executor.invoke(target, body if body.strip() else b"{}", request_id=rid,
                                               trigger="sync", client_context=client_context, trace_id=trace)
        except Busy as exc:
            return self.busy(exc, rid)
        return self.answer(request, svc, target, result, trace, rid)

    # -- reading the request (raise Refused to answer at once) ----------------------------------------------

    @abstractmethod
    def ref(self, request: Request, svc: GatewayServices, rid: str) -> Ref:
        """The function and qualifier the request names."""

    def client_context(self, request: Request, rid: str) -> Any:
        """The context.client_context to give the handler (None: the API has none)."""
        return None

    # -- the answers -----------------------------------------------------------------------------------------

    @abstractmethod
    def bad_type(self, invocation_type: str, rid: str) -> Response:
        """An invocation type other than RequestResponse, Event or DryRun."""

    @abstractmethod
    def too_large(self, exc: BodyTooLarge, rid: str) -> Response:
        """The body passed the payload limit (`exc.limit`)."""

    @abstractmethod
    def bad_json(self, problem: str, rid: str) -> Response:
        """The body is not a JSON document the sandbox can decode (`problem` says why)."""

    @abstractmethod
    def not_found(self, exc: NotFound, svc: GatewayServices, ref: Ref, rid: str) -> Response:
        """No such function, version or alias."""

    @abstractmethod
    def dry_run(self, target: Target, rid: str) -> Response:
        """DryRun: the target exists and may be invoked."""

    @abstractmethod
    def accepted(self, trace: str, rid: str) -> Response:
        """Event: queued durably, with this trace header."""

    @abstractmethod
    def busy(self, exc: Busy, rid: str) -> Response:
        """No sandbox could be had on this node in time."""

    @abstractmethod
    def answer(self, request: Request, svc: GatewayServices, target: Target, result: InvocationResult, trace: str,
               rid: str) -> Response:
        """The invocation ran (or was throttled by its reserved concurrency): its outcome, as this API says it."""
