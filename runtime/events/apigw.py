"""Lambda function URL requests and responses (API Gateway HTTP API payload format 2.0).

`build_http_event` turns one HTTP request into the event a function URL hands to its function;
`http_response` turns the function's return value back into the HTTP response the caller sees.
Rules follow the AWS Lambda developer guide ("Invoking Lambda function URLs", request and
response payloads) and the API Gateway guide ("Lambda proxy integrations for HTTP APIs").
Where the guides are silent, the behaviour recorded against real AWS is followed; each such
place says so in a comment.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

import orjson

__all__ = ["HttpResponse", "ResponseShapeError", "build_http_event", "http_response", "split_host"]

# Function URLs have no routes or stages; AWS fills both with this placeholder.
DEFAULT_ROUTE = "$default"
DEFAULT_CONTENT_TYPE = "application/json"

# Request bodies of these media types reach the function as text; every other type,
# and a request with no Content-Type at all, arrives base64-encoded. AWS does not list
# the text types; this set is the one observed on real HTTP APIs / function URLs
# (form-urlencoded and multipart bodies do arrive base64-encoded).
_TEXT_MEDIA_TYPES = frozenset({"application/json", "application/xml", "application/javascript"})
_TEXT_SUFFIXES = ("+json", "+xml")

# Connection-level headers, never passed on to the function (RFC 9110 7.6.1, and the older Keep-Alive and
# Proxy-Connection that clients still send).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                         "upgrade"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

# English month names, so the timestamp does not depend on the process locale.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class ResponseShapeError(ValueError):
    """The function returned a `statusCode` response that cannot become HTTP (AWS answers 502)."""


@dataclass(frozen=True, kw_only=True)
class HttpResponse:
    """An HTTP response ready to send; header names are lower-case and may repeat (set-cookie)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


# ---------------------------------------------------------------- request -> event


def build_http_event(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    source_ip: str,
    request_id: str,
    host: str,
    scheme: str,
    url_id: str,
    trace_id: str,
    now_ms: int,
    account_id: str = "000000000000",
) -> dict[str, Any]:
    """Build the payload-2.0 event a function URL sends for one request.

    `raw_path` is the path relative to the function URL, as sent ("/" when empty); `raw_query` is
    the query string without "?". `host` is the Host the caller used (port included when it gave
    one) and `scheme` its protocol (http, or what a trusted proxy said); `url_id` names the function
    URL (AWS's url-id: `apiId` and `domainPrefix`); `trace_id` is the invocation's X-Ray header.
    Header names are lower-cased, repeated headers are joined with commas, Cookie headers move to
    `cookies`, hop-by-hop headers are dropped, and the headers AWS's front end adds are set.
    """
    path = raw_path if raw_path.startswith("/") else "/" + raw_path
    header_map, cookies = _event_headers(headers)
    domain_name, port = split_host(host)
    # What AWS's front end adds to every request, over anything a caller sent under these names.
    header_map["x-forwarded-proto"] = scheme
    header_map["x-forwarded-port"] = str(port or _DEFAULT_PORTS.get(scheme, 80))
    header_map["x-forwarded-for"] = source_ip
    header_map["x-amzn-trace-id"] = _trace_header(header_map.get("x-amzn-trace-id"), trace_id)

    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": DEFAULT_ROUTE,
        "rawPath": path,
        "rawQueryString": raw_query,
    }
    # AWS leaves `cookies` and `queryStringParameters` out when there are none.
    if cookies:
        event["cookies"] = cookies
    event["headers"] = header_map
    query = _query_parameters(raw_query)
    if query:
        event["queryStringParameters"] = query
    event["requestContext"] = {
        "accountId": account_id,
        "apiId": url_id,
        "domainName": domain_name,
        "domainPrefix": url_id,
        "http": {
            "method": method.upper(),
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": header_map.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": DEFAULT_ROUTE,
        "stage": DEFAULT_ROUTE,
        "time": _clf_time(now_ms),
        "timeEpoch": now_ms,
    }
    # A request without a body (GET, say) has no `body` key at all.
    if body:
        text = _as_text(body, header_map.get("content-type"))
        if text is None:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
            event["isBase64Encoded"] = False
    else:
        event["isBase64Encoded"] = False
    event["pathParameters"] = None
    event["stageVariables"] = None
    return event


def split_host(host: str) -> tuple[str, int | None]:
    """A Host header's name (lower case, brackets of an IPv6 literal kept) and its port, None when it has none."""
    name, port = host.strip().lower(), None
    head, colon, tail = name.rpartition(":")
    if colon and tail.isdigit() and (not head.startswith("[") or head.endswith("]")):
        name, port = head, int(tail)
    return name, port


def _trace_header(incoming: str | None, trace_id: str) -> str:
    """The event's `x-amzn-trace-id`: the caller's own, passed through, when the invocation's trace continues it;
    else the invocation's Root alone, the form AWS's front end writes (`Root=1-62ecd163-5f302e550dcde3b12402207d`)."""
    root = trace_id.split(";", 1)[0]
    if incoming and root.partition("=")[2] in incoming:
        return incoming
    return root


def _event_headers(raw: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], list[str]]:
    """Lower-case names, join repeats with "," (format 2.0 has no multiValueHeaders), split cookies."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    # Hop-by-hop headers concern the connection to the gateway alone (RFC 9110, 7.6.1): a proxy, as AWS's
    # front end is, passes none of them on, nor the headers that a Connection header names as such.
    dropped = set(_HOP_BY_HOP)
    for raw_name, raw_value in raw:
        if raw_name.lower() == b"connection":
            dropped.update(part.strip().lower() for part in _decode_header(raw_value).split(","))
    for raw_name, raw_value in raw:
        name = _decode_header(raw_name).lower()
        value = _decode_header(raw_value)
        if name in dropped:
            continue
        if name == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
        elif name in headers:
            headers[name] = f"{headers[name]},{value}"
        else:
            headers[name] = value
    return headers, cookies


def _decode_header(raw: bytes) -> str:
    """Header bytes are usually ASCII; keep UTF-8 when it is valid and latin-1 (lossless) otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _query_parameters(raw_query: str) -> dict[str, str]:
    """Decoded query parameters; a repeated name keeps every value, joined with commas."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        params[name] = f"{params[name]},{value}" if name in params else value
    return params


def _as_text(body: bytes, content_type: str | None) -> str | None:
    """The body as text when its media type is textual and it is valid UTF-8, else None (binary)."""
    if content_type is None or not _is_text_media_type(content_type):
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        # A JSON string cannot carry invalid UTF-8; base64 keeps the bytes intact.
        return None


def _is_text_media_type(content_type: str) -> bool:
    """True for text/*, JSON, XML and JavaScript media types; parameters such as charset are ignored."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return (
        media_type.startswith("text/")
        or media_type in _TEXT_MEDIA_TYPES
        or media_type.endswith(_TEXT_SUFFIXES)
    )


def _clf_time(now_ms: int) -> str:
    """The request time as AWS writes it: "12/Mar/2020:19:03:58 +0000" (always UTC)."""
    moment = datetime.fromtimestamp(now_ms // 1000, tz=timezone.utc)
    return f"{moment.day:02d}/{_MONTHS[moment.month - 1]}/{moment.year:04d}:{moment:%H:%M:%S} +0000"


# ---------------------------------------------------------------- result -> response


def http_response(result: Any) -> HttpResponse:
    """Turn the function's (JSON-decoded) return value into the HTTP response, by function URL rules.

    A dict with a `statusCode` key is a response description; anything else is a bare value
    that AWS serves as status 200, content-type application/json.
    """
    if isinstance(result, dict) and "statusCode" in result:
        return _described_response(result)
    return HttpResponse(
        status=200,
        headers=[("content-type", DEFAULT_CONTENT_TYPE)],
        body=_bare_body(result),
    )


def _bare_body(result: Any) -> bytes:
    """The body for a return value without `statusCode`.

    A returned string is served as its own text, not as a JSON string literal: real function
    URLs answer `return "hello"` with the 5 bytes `hello` (the Lambda guide's example shows
    quotes, but the service does not add them). Everything else is served as compact JSON.
    """
    if isinstance(result, str):
        return result.encode("utf-8")
    try:
        return orjson.dumps(result)
    except orjson.JSONEncodeError:
        # orjson refuses integers beyond 64 bits, which the stdlib decoder can produce.
        return json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _described_response(result: dict[str, Any]) -> HttpResponse:
    """Build the response from a `statusCode` dict; malformed fields raise ResponseShapeError."""
    status = result["statusCode"]
    # As AWS: a string of digits ("418") is a status too. bool is an int subclass, but `true` is not one.
    if isinstance(status, str) and status.isascii() and status.isdigit():
        status = int(status)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ResponseShapeError(f"statusCode must be an integer from 100 to 599, got {status!r}")

    headers = _response_headers(result.get("headers"))
    headers.extend(("set-cookie", cookie) for cookie in _response_cookies(result.get("cookies")))
    if not any(name == "content-type" for name, _ in headers):
        headers.append(("content-type", DEFAULT_CONTENT_TYPE))

    return HttpResponse(
        status=status,
        headers=headers,
        body=_response_body(result.get("body"), result.get("isBase64Encoded")),
    )


def _response_headers(raw: Any) -> list[tuple[str, str]]:
    """The `headers` object as (lower-case name, value) pairs; scalar values become strings."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ResponseShapeError(f"headers must be an object, got {type(raw).__name__}")
    headers: list[tuple[str, str]] = []
    for name, value in raw.items():
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            raise ResponseShapeError(f"header {name!r} must be a string, got {type(value).__name__}")
        # Numbers and booleans are written as JSON writes them: 5, 2.5, true.
        text = value if isinstance(value, str) else json.dumps(value)
        _reject_line_breaks(name, text)
        headers.append((name.lower(), text))
    return headers


def _response_cookies(raw: Any) -> list[str]:
    """The `cookies` list; each entry becomes one Set-Cookie header."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ResponseShapeError(f"cookies must be a list of strings, got {type(raw).__name__}")
    cookies: list[str] = []
    for cookie in raw:
        if not isinstance(cookie, str):
            raise ResponseShapeError(f"cookies must be a list of strings, got {cookie!r}")
        _reject_line_breaks("set-cookie", cookie)
        cookies.append(cookie)
    return cookies


def _reject_line_breaks(name: str, value: str) -> None:
    """Refuse CR, LF and NUL in a header: passing them on would let a function split the response."""
    if any(char in value for char in "\r\n\0") or any(char in name for char in "\r\n\0:"):
        raise ResponseShapeError(f"header {name!r} contains a forbidden character")
    try:
        name.encode("latin-1")
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ResponseShapeError(f"header {name!r} is not latin-1 text; percent-encode it") from None


def _response_body(body: Any, is_base64: Any) -> bytes:
    """The body bytes: a missing body is empty, a base64 body is decoded when isBase64Encoded is true."""
    if is_base64 is not None and not isinstance(is_base64, bool):
        raise ResponseShapeError(f"isBase64Encoded must be a boolean, got {is_base64!r}")
    if body is None:
        return b""
    if not isinstance(body, str):
        # AWS serves any other JSON value as its JSON text (a handler returning "body": {...} works there).
        return _bare_body(body)
    if not is_base64:
        return body.encode("utf-8")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ResponseShapeError("isBase64Encoded is true but body is not valid base64") from exc
