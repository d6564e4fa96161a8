"""Which routes need which key, checked before any route runs (a pure ASGI middleware).

Admin operations (deploy, delete, aliases, the DLQ) need an admin key (configured, or the one the gateway
generated: admin_key.py); reads that can hold a secret need a key of any role; invocations need an invoke key
only when `auth.require_invoke_key` is set; /healthz, the OpenAPI document and the console's assets are open.
On the AWS Lambda API's paths the control plane's reads need a key of any role and its other operations the
admin key; GetFunction's presigned Code.Location is checked by its own route (lambda_api/downloads.py).
The SNS Query API at `/` names its operation in the form body (`Action=...`): the body is read first (bounded by
sns_api.MAX_BODY_BYTES), then Publish and PublishBatch are invocations and every other action (its List and Get
ones too: they show the subscriptions) needs the admin key.
No caller is trusted for its address. A refusal is 401 or 403 with a JSON body that says what to do, in
AWS's error shape on the AWS API's paths, and in SNS's XML on `/`.
"""

from __future__ import annotations

import re
from typing import Literal

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import Authenticator, AuthError, Principal
from . import sns_api
from .errors import is_aws_api

Need = Literal["admin", "invoke", "read", "open", "sns"]

_OPEN = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/sns/signing-cert"}
# AWS's error codes and statuses of the Query APIs, for a refusal of an SNS action.
_SNS_REFUSALS = {
    "MissingAuthenticationTokenException": (403, "MissingAuthenticationToken"),
    "InvalidToken": (403, "InvalidClientTokenId"),
    "UnrecognizedClientException": (403, "InvalidClientTokenId"),
    "InvalidSignatureException": (403, "SignatureDoesNotMatch"),
    "IncompleteSignatureException": (400, "IncompleteSignature"),
    "RequestExpired": (400, "RequestExpired"),
    "AccessDeniedException": (403, "AuthorizationError"),
}
_ADMIN = [
    (frozenset({"PUT"}), re.compile(r"^/functions/[^/]+/code$")),
    (frozenset({"PUT", "DELETE"}), re.compile(r"^/functions/[^/]+/aliases/[^/]+$")),
    (frozenset({"DELETE"}), re.compile(r"^/functions/[^/]+$")),
    (frozenset({"GET", "POST", "DELETE"}), re.compile(r"^/functions/[^/]+/dlq(/.*)?$")),
]
# Reads that can hold a secret (configuration, logs, results, state, metrics): any key, once keys are configured.
_READ = re.compile(r"^/(functions(/[^/]+(/(logs|stats|streams|aliases))?)?|invocations/[^/]+|schedules|metrics)$")
# GetFunction's Code.Location: presigned, its route checks the link's signature (lambda_api/downloads.py).
_CODE_LINK = re.compile(r"^/functions/[^/]+/code/[0-9a-f]{64}\.zip$")
# The invocations of the AWS Lambda API; every other operation on its paths is of the control plane.
_AWS_INVOKE = re.compile(r"^/(2015-03-31/functions/[^/]+/invocations|2014-11-13/functions/[^/]+/invoke-async|"
                         r"2021-11-15/functions/[^/]+/response-streaming-invocations)/?$")


def need_of(method: str, path: str) -> Need:
    if path == "/" and method in ("POST", "GET"):
        return "sns"            # decided by the form's Action (AuthMiddleware._sns)
    # The console's page and assets hold no data: every API call the page makes is checked as usual.
    if path in _OPEN or path == "/console" or path.startswith("/console/static/"):
        return "open"
    if path[1:2].isdigit() and is_aws_api(path):
        # The Lambda API: invocations as Lambent's own; the control plane's reads need a key of any role (they
        # hold configuration), its writes, and operations not built, the admin key.
        if method == "POST" and _AWS_INVOKE.match(path):
            return "invoke"
        return "read" if method in ("GET", "HEAD") else "admin"
    if method == "GET" and _CODE_LINK.match(path):
        return "open"
    if any(method in methods and pattern.match(path) for methods, pattern in _ADMIN):
        return "admin"
    if method == "GET" and _READ.match(path):
        return "read"
    return "invoke"


class AuthMiddleware:
    def __init__(self, app: ASGIApp, *, authenticator: Authenticator, require_invoke_key: bool,
                 max_body_bytes: int) -> None:
        self.app = app
        self._auth = authenticator
        self._require_invoke_key = require_invoke_key
        self._max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        need = need_of(method, path)
        if need == "open" or (need == "invoke" and not self._require_invoke_key):
            await self.app(scope, receive, send)        # the hot path: nothing to check, nothing buffered
            return
        if need == "sns":
            await self._sns(scope, receive, send)
            return
        headers = Headers(scope=scope)
        client = scope.get("client")
        client_host = str(client[0]) if client else None     # for the log: the peer, or as trusted_proxies say
        raw_path = scope.get("raw_path", path.encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        declared = headers.get("content-length", "")
        too_large = AuthError(413, "RequestTooLarge", f"the body is larger than {self._max_body} bytes")
        if not headers.get("authorization", "").lstrip().startswith("AWS4-HMAC-SHA256"):
            # No key, or a bearer token: decided from the headers alone, before a byte of the body is read;
            # the route then reads the body itself, within its own limit.
            try:
                principal = self._auth.authorize(need=need, method=method, path=raw_path, query=query,
                                                 headers=headers, body=b"", client_host=client_host)
            except AuthError as exc:
                await self._refuse(scope, send, exc)
                return
            self._remember(scope, principal)
            if declared.isdigit() and int(declared) > self._max_body:
                await self._refuse(scope, send, too_large)
                return
            await self.app(scope, receive, send)
            return
        if declared.isdigit() and int(declared) > self._max_body:      # refused before a byte is read
            await self._refuse(scope, send, too_large)
            return
        # A signature covers the body: read it (bounded), check, then replay it to the route.
        body = await _read(receive, self._max_body)
        if body is _DISCONNECTED:
            return
        if body is None:                       # read no further
            await self._refuse(scope, send, too_large)
            return
        try:
            principal = self._auth.authorize(need=need, method=method, path=raw_path, query=query, headers=headers,
                                             body=body, client_host=client_host)
        except AuthError as exc:
            await self._refuse(scope, send, exc)
            return
        self._remember(scope, principal)
        await self.app(scope, _replay(body, receive), send)

    async def _sns(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The SNS Query API: the form is read (bounded) to learn its Action, which decides the key it needs.
        The parsed form goes to the route in the request's state; one that does not parse is the route's to
        refuse, once an admin key (what an unknown action needs) has been shown."""
        headers = Headers(scope=scope)
        client = scope.get("client")
        client_host = str(client[0]) if client else None
        raw_path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        limit = sns_api.MAX_BODY_BYTES
        declared = headers.get("content-length", "")
        body = None if declared.isdigit() and int(declared) > limit else await _read(receive, limit)
        if body is _DISCONNECTED:
            return
        if body is None:
            await self._refuse_sns(scope, send, 400, "InvalidParameter",
                                   f"Invalid parameter: the request is larger than {limit} bytes (a message is at "
                                   "most 262144)")
            return
        try:
            params: dict[str, str] | None = sns_api.parse_form(body, query)
        except sns_api.FormError:
            params = None
        action = (params or {}).get("Action")
        need: Literal["invoke", "admin"] = "invoke" if action in sns_api.PUBLISH_ACTIONS else "admin"
        try:
            principal = self._auth.authorize(need=need, method=scope["method"], path=raw_path, query=query,
                                             headers=headers, body=body, client_host=client_host)
        except AuthError as exc:
            status, code = _SNS_REFUSALS.get(exc.code, (exc.status, exc.code))
            await self._refuse_sns(scope, send, status, code, exc.message)
            return
        self._remember(scope, principal)
        scope.setdefault("state", {})["sns_params"] = params
        await self.app(scope, _replay(body, receive), send)

    async def _refuse_sns(self, scope: Scope, send: Send, status: int, code: str, message: str) -> None:
        request_id = scope.get("state", {}).get("request_id", "")
        body = sns_api.xml_error(code, message, request_id)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/xml"), (b"x-amzn-requestid", request_id.encode())]})
        await send({"type": "http.response.body", "body": body})

    def _remember(self, scope: Scope, principal: Principal) -> None:
        """For the route: who called, and whether they may see secrets (what admin operations may see)."""
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["may_admin"] = self._auth.allows(principal, "admin")

    async def _refuse(self, scope: Scope, send: Send, exc: AuthError) -> None:
        request_id = scope.get("state", {}).get("request_id", "")
        headers = [(b"content-type", b"application/json")]
        if is_aws_api(scope["path"]):
            body = orjson.dumps({"Type": "User", "message": exc.message})
            headers += [(b"x-amzn-errortype", exc.code.encode()), (b"x-amzn-requestid", request_id.encode())]
        else:
            body = orjson.dumps({"error": exc.code, "message": exc.message, "requestId": request_id})
        if exc.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="lambent"'))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_DISCONNECTED = b"\0disconnected"      # a sentinel: the client went away while its body was read


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The whole body, None once it passes `limit` (read no further), or _DISCONNECTED."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _DISCONNECTED
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the route the body read already, then whatever the connection says next."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
