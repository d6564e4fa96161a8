"""Function URL event building and response mapping (runtime.events.apigw), as pure unit tests."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from runtime.events.apigw import HttpResponse, ResponseShapeError, build_http_event, http_response

# 2020-03-12T19:03:58.390Z, the instant of the AWS documentation's example event.
NOW_MS = 1584039838390
TRACE = "Root=1-5e6a8cae-3e5a2f1c9b8d7e6f5a4b3c2d;Parent=53995c3f42cd8ad8;Sampled=0"
# The headers AWS's front end adds to every request, as make_event's connection details give them.
ADDED = {"x-forwarded-proto": "https", "x-forwarded-port": "443", "x-forwarded-for": "203.0.113.7",
         "x-amzn-trace-id": "Root=1-5e6a8cae-3e5a2f1c9b8d7e6f5a4b3c2d"}


def make_event(
    *,
    method: str = "GET",
    raw_path: str = "/",
    raw_query: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    host: str = "abc123.lambda-url.local",
    scheme: str = "https",
) -> dict[str, Any]:
    """Build an event with fixed connection details, so each test states only what it varies."""
    return build_http_event(
        method=method,
        raw_path=raw_path,
        raw_query=raw_query,
        headers=headers if headers is not None else [(b"host", b"abc123.lambda-url.local")],
        body=body,
        source_ip="203.0.113.7",
        request_id="req-1",
        host=host,
        scheme=scheme,
        url_id="abc123",
        trace_id=TRACE,
        now_ms=NOW_MS,
    )


def header(response: HttpResponse, name: str) -> list[str]:
    """Every value of one response header, in order."""
    return [value for key, value in response.headers if key == name]


# ---------------------------------------------------------------- request -> event


def test_given_a_get_request_when_built_then_event_has_the_fixed_function_url_fields() -> None:
    event = make_event(
        method="get",
        raw_path="/items/3",
        headers=[(b"Host", b"abc123.lambda-url.local"), (b"User-Agent", b"curl/8.0")],
    )

    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/items/3"
    assert event["pathParameters"] is None
    assert event["stageVariables"] is None
    assert event["requestContext"] == {
        "accountId": "000000000000",
        "apiId": "abc123",
        "domainName": "abc123.lambda-url.local",
        "domainPrefix": "abc123",
        "http": {
            "method": "GET",
            "path": "/items/3",
            "protocol": "HTTP/1.1",
            "sourceIp": "203.0.113.7",
            "userAgent": "curl/8.0",
        },
        "requestId": "req-1",
        "routeKey": "$default",
        "stage": "$default",
        "time": "12/Mar/2020:19:03:58 +0000",
        "timeEpoch": NOW_MS,
    }


def test_given_an_empty_relative_path_when_built_then_raw_path_is_slash() -> None:
    event = make_event(raw_path="")

    assert event["rawPath"] == "/"
    assert event["requestContext"]["http"]["path"] == "/"


def test_given_repeated_query_parameters_when_built_then_values_are_joined_with_commas() -> None:
    event = make_event(raw_query="a=1&a=2&b=x%20y&flag")

    assert event["rawQueryString"] == "a=1&a=2&b=x%20y&flag"
    assert event["queryStringParameters"] == {"a": "1,2", "b": "x y", "flag": ""}


def test_given_no_query_string_when_built_then_query_parameters_are_absent() -> None:
    event = make_event()

    assert event["rawQueryString"] == ""
    assert "queryStringParameters" not in event


def test_given_repeated_headers_when_built_then_names_are_lowercased_and_values_comma_joined() -> None:
    event = make_event(
        headers=[(b"Accept", b"text/html"), (b"X-Tag", b"one"), (b"x-tag", b"two")],
    )

    assert event["headers"] == {"accept": "text/html", "x-tag": "one,two", **ADDED}


def test_given_cookie_headers_when_built_then_cookies_move_out_of_headers() -> None:
    event = make_event(
        headers=[(b"cookie", b"a=1; b=2"), (b"Cookie", b"c=3"), (b"accept", b"*/*")],
    )

    assert event["cookies"] == ["a=1", "b=2", "c=3"]
    assert "cookie" not in event["headers"]


def test_given_no_cookie_header_when_built_then_cookies_are_absent() -> None:
    assert "cookies" not in make_event()


def test_given_any_request_when_built_then_the_headers_aws_adds_are_there() -> None:
    event = make_event(headers=[(b"host", b"abc123.lambda-url.local"), (b"user-agent", b"curl/8.0")])

    assert event["headers"] == {"host": "abc123.lambda-url.local", "user-agent": "curl/8.0", **ADDED}


def test_given_forwarded_headers_from_the_caller_when_built_then_what_the_gateway_saw_replaces_them() -> None:
    event = make_event(headers=[(b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-For", b"10.9.9.9"),
                                (b"X-Forwarded-Port", b"1")], scheme="http", host="abc123.lambda-url.local:8080")

    assert event["headers"]["x-forwarded-proto"] == "http"
    assert event["headers"]["x-forwarded-port"] == "8080"
    assert event["headers"]["x-forwarded-for"] == "203.0.113.7"


@pytest.mark.parametrize(("host", "scheme", "domain", "port"), [
    ("abc123.lambda-url.local", "https", "abc123.lambda-url.local", "443"),
    ("abc123.lambda-url.local", "http", "abc123.lambda-url.local", "80"),
    ("Hello.Lambda-URL.localhost:8080", "http", "hello.lambda-url.localhost", "8080"),
    ("127.0.0.1:9000", "http", "127.0.0.1", "9000"),
    ("[::1]:9000", "http", "[::1]", "9000"),
    ("[::1]", "https", "[::1]", "443"),
])
def test_given_a_host_when_built_then_domain_name_is_it_without_port_and_the_port_is_forwarded(
    host: str, scheme: str, domain: str, port: str
) -> None:
    event = make_event(host=host, scheme=scheme)

    assert event["requestContext"]["domainName"] == domain
    assert event["requestContext"]["domainPrefix"] == event["requestContext"]["apiId"] == "abc123"
    assert event["headers"]["x-forwarded-port"] == port


def test_given_a_callers_trace_header_when_built_then_it_is_passed_through() -> None:
    incoming = "Root=1-5e6a8cae-3e5a2f1c9b8d7e6f5a4b3c2d;Parent=1111111111111111;Sampled=1"

    event = make_event(headers=[(b"X-Amzn-Trace-Id", incoming.encode())])

    assert event["headers"]["x-amzn-trace-id"] == incoming


def test_given_a_trace_header_the_invocation_did_not_continue_when_built_then_its_own_root_is_sent() -> None:
    event = make_event(headers=[(b"x-amzn-trace-id", b"garbage")])

    assert event["headers"]["x-amzn-trace-id"] == "Root=1-5e6a8cae-3e5a2f1c9b8d7e6f5a4b3c2d"


def test_given_hop_by_hop_headers_when_built_then_none_of_them_reaches_the_function() -> None:
    event = make_event(method="POST", headers=[
        (b"Connection", b"keep-alive, X-Private-Hop"), (b"Keep-Alive", b"timeout=5"), (b"Proxy-Connection", b"x"),
        (b"TE", b"trailers"), (b"Trailer", b"Expires"), (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c"),
        (b"X-Private-Hop", b"1"), (b"Accept", b"*/*")])

    assert event["headers"] == {"accept": "*/*", **ADDED}


def test_given_a_percent_encoded_path_when_built_then_raw_path_keeps_it_as_sent() -> None:
    event = make_event(raw_path="/files/a%20b%2Fc")

    assert event["rawPath"] == event["requestContext"]["http"]["path"] == "/files/a%20b%2Fc"


def test_given_no_body_when_built_then_body_is_absent_and_not_base64() -> None:
    event = make_event()

    assert "body" not in event
    assert event["isBase64Encoded"] is False


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/html; charset=utf-8",
        "application/json",
        "Application/JSON; charset=UTF-8",
        "application/xml",
        "application/javascript",
        "application/vnd.api+json",
        "application/atom+xml",
    ],
)
def test_given_a_text_content_type_when_built_then_body_is_passed_as_text(content_type: str) -> None:
    event = make_event(
        method="POST",
        headers=[(b"content-type", content_type.encode())],
        body='{"name": "Zoë"}'.encode(),
    )

    assert event["body"] == '{"name": "Zoë"}'
    assert event["isBase64Encoded"] is False


@pytest.mark.parametrize(
    "content_type",
    [
        "application/octet-stream",
        "image/png",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        None,
    ],
)
def test_given_a_binary_or_missing_content_type_when_built_then_body_is_base64(
    content_type: str | None,
) -> None:
    headers = [] if content_type is None else [(b"content-type", content_type.encode())]
    payload = b"\x89PNG\r\n\x00\xff"

    event = make_event(method="POST", headers=headers, body=payload)

    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


def test_given_a_text_content_type_with_invalid_utf8_when_built_then_body_is_base64() -> None:
    payload = b"caf\xe9"

    event = make_event(method="POST", headers=[(b"content-type", b"text/plain")], body=payload)

    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


# ---------------------------------------------------------------- bare return values


@pytest.mark.parametrize(
    ("result", "body"),
    [
        ({"message": "hi"}, b'{"message":"hi"}'),
        (["hello", 3, True], b'["hello",3,true]'),
        (3, b"3"),
        (3.1, b"3.1"),
        (True, b"true"),
        (None, b"null"),
    ],
    ids=["dict", "list", "integer", "float", "boolean", "none"],
)
def test_given_a_bare_value_when_mapped_then_200_json_with_the_value_as_body(
    result: Any, body: bytes
) -> None:
    response = http_response(result)

    assert response == HttpResponse(
        status=200, headers=[("content-type", "application/json")], body=body
    )


def test_given_a_bare_string_when_mapped_then_body_is_the_string_itself_without_quotes() -> None:
    response = http_response("Hello, world!")

    assert response.status == 200
    assert header(response, "content-type") == ["application/json"]
    assert response.body == b"Hello, world!"


def test_given_an_integer_beyond_64_bits_when_mapped_then_it_is_still_served_as_json() -> None:
    assert http_response([2**70]).body == b"[1180591620717411303424]"


# ---------------------------------------------------------------- statusCode responses


def test_given_status_headers_and_body_when_mapped_then_they_are_used_as_given() -> None:
    response = http_response(
        {
            "statusCode": 201,
            "headers": {"Content-Type": "text/plain", "My-Custom-Header": "Custom Value"},
            "body": "created",
        }
    )

    assert response.status == 201
    assert response.headers == [
        ("content-type", "text/plain"),
        ("my-custom-header", "Custom Value"),
    ]
    assert response.body == b"created"


def test_given_no_content_type_header_when_mapped_then_content_type_defaults_to_json() -> None:
    response = http_response({"statusCode": 200, "body": "body123"})

    assert header(response, "content-type") == ["application/json"]
    assert response.body == b"body123"


def test_given_cookies_when_mapped_then_each_cookie_becomes_one_set_cookie_header() -> None:
    response = http_response(
        {
            "statusCode": 200,
            "cookies": ["Cookie_1=Value1; Expires=21 Oct 2021 07:48 GMT", "Cookie_2=Value2"],
            "body": "ok",
        }
    )

    assert header(response, "set-cookie") == [
        "Cookie_1=Value1; Expires=21 Oct 2021 07:48 GMT",
        "Cookie_2=Value2",
    ]


def test_given_a_base64_body_when_mapped_then_the_bytes_are_decoded() -> None:
    payload = b"\x89PNG\r\n\x1a\n\x00\xff"

    response = http_response(
        {
            "statusCode": 200,
            "headers": {"content-type": "image/png"},
            "body": base64.b64encode(payload).decode(),
            "isBase64Encoded": True,
        }
    )

    assert response.body == payload
    assert header(response, "content-type") == ["image/png"]


def test_given_base64_flag_false_when_mapped_then_body_is_sent_as_utf8_text() -> None:
    response = http_response({"statusCode": 200, "body": "aGk=", "isBase64Encoded": False})

    assert response.body == b"aGk="


def test_given_no_body_when_mapped_then_body_is_empty() -> None:
    response = http_response({"statusCode": 204})

    assert response.status == 204
    assert response.body == b""


def test_given_non_string_header_values_when_mapped_then_they_are_written_as_json_scalars() -> None:
    response = http_response(
        {
            "statusCode": 200,
            "headers": {"Access-Control-Max-Age": 0, "X-Ratio": 2.5, "X-Flag": True, "X-Gone": None},
        }
    )

    assert header(response, "access-control-max-age") == ["0"]
    assert header(response, "x-ratio") == ["2.5"]
    assert header(response, "x-flag") == ["true"]
    assert header(response, "x-gone") == []


# ---------------------------------------------------------------- malformed statusCode responses


@pytest.mark.parametrize(
    "result",
    [
        {"statusCode": "2OO"},
        {"statusCode": "200.0"},
        {"statusCode": 200.0},
        {"statusCode": True},
        {"statusCode": None},
        {"statusCode": 99},
        {"statusCode": 600},
        {"statusCode": 200, "headers": ["content-type", "text/plain"]},
        {"statusCode": 200, "headers": "content-type: text/plain"},
        {"statusCode": 200, "headers": {"x-list": ["a", "b"]}},
        {"statusCode": 200, "headers": {"x-evil": "a\r\nset-cookie: stolen=1"}},
        {"statusCode": 200, "cookies": "a=1"},
        {"statusCode": 200, "cookies": ["a=1", 2]},
        {"statusCode": 200, "body": "aGk=", "isBase64Encoded": "true"},
        {"statusCode": 200, "body": "not base64!", "isBase64Encoded": True},
        {"statusCode": 200, "body": "aGk", "isBase64Encoded": True},
    ],
    ids=[
        "status-letters",
        "status-decimal-string",
        "status-float",
        "status-bool",
        "status-null",
        "status-below-100",
        "status-above-599",
        "headers-list",
        "headers-string",
        "header-value-list",
        "header-value-crlf",
        "cookies-string",
        "cookies-non-string-entry",
        "base64-flag-string",
        "base64-invalid-characters",
        "base64-bad-padding",
    ],
)
def test_given_a_malformed_status_code_response_when_mapped_then_response_shape_error(
    result: dict[str, Any],
) -> None:
    with pytest.raises(ResponseShapeError):
        http_response(result)


@pytest.mark.parametrize("status", ["418", 418])
def test_given_a_status_code_of_digits_as_a_string_then_it_is_the_status_as_on_aws(status: Any) -> None:
    assert http_response({"statusCode": status, "body": "teapot"}).status == 418


@pytest.mark.parametrize("body, served", [({"a": [1, 2]}, b'{"a":[1,2]}'), ([1, "x"], b'[1,"x"]'), (5, b"5"),
                                          (True, b"true")])
def test_given_a_body_that_is_not_a_string_then_it_is_served_as_its_json_as_on_aws(body: Any, served: bytes) -> None:
    response = http_response({"statusCode": 200, "body": body})
    assert response.body == served and response.status == 200


def test_given_a_response_shape_error_then_it_is_a_value_error() -> None:
    assert issubclass(ResponseShapeError, ValueError)
