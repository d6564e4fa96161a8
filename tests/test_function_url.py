"""Function URLs: `ANY /fn/{name}/{path}` turns the request into a payload-2.0 event and the result into HTTP."""

from __future__ import annotations

import base64
import json
from typing import Any, Iterator

import httpx
import pytest

from .helpers import Gateway


@pytest.fixture(scope="module")
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client(anonymous=True) as client:      # a function URL's callers are the public
        yield client


def event_of(response: httpx.Response) -> dict[str, Any]:
    """The event urlecho received, which it sends back as its JSON body."""
    assert response.status_code == 200, response.text
    assert response.headers["x-echo"] == "yes"
    return json.loads(response.content)


# ---------------------------------------------------------------- request -> event


def test_the_path_after_the_function_name_becomes_raw_path(http: httpx.Client) -> None:
    # given urlecho, which has an http event
    # when a nested path is requested
    response = http.get("/fn/urlecho/items/3")

    # then the event carries the path relative to the function
    event = event_of(response)
    assert event["version"] == "2.0"
    assert event["rawPath"] == "/items/3"
    assert event["requestContext"]["http"]["path"] == "/items/3"


def test_the_function_root_has_raw_path_slash(http: httpx.Client) -> None:
    # given urlecho, when its bare URL is requested
    response = http.get("/fn/urlecho")

    # then the path is "/"
    assert event_of(response)["rawPath"] == "/"


def test_the_query_string_is_raw_and_parsed_with_repeats_joined(http: httpx.Client) -> None:
    # given a query with a repeated parameter and an encoded value
    # when urlecho is requested with it
    response = http.get("/fn/urlecho/search?tag=a&tag=b&q=hello%20world")

    # then the raw query is kept and the repeated values are joined with commas
    event = event_of(response)
    assert event["rawQueryString"] == "tag=a&tag=b&q=hello%20world"
    assert event["queryStringParameters"] == {"tag": "a,b", "q": "hello world"}


def test_a_request_without_query_has_no_query_parameters(http: httpx.Client) -> None:
    # given no query string, when urlecho is requested
    event = event_of(http.get("/fn/urlecho/plain"))

    # then rawQueryString is empty and queryStringParameters is absent, as AWS sends it
    assert event["rawQueryString"] == ""
    assert "queryStringParameters" not in event


def test_headers_are_lower_cased_and_repeats_joined_with_commas(http: httpx.Client) -> None:
    # given a request with a repeated header and a mixed-case one
    headers = [("X-Multi", "one"), ("X-Multi", "two"), ("X-Single", "Value")]

    # when urlecho is requested with them
    event = event_of(http.get("/fn/urlecho/h", headers=headers))

    # then the event's headers are lower-case, with repeats joined
    assert event["headers"]["x-multi"] == "one,two"
    assert event["headers"]["x-single"] == "Value"


def test_cookies_move_from_the_cookie_header_to_the_cookies_list(http: httpx.Client) -> None:
    # given a request with a Cookie header of two cookies
    # when urlecho is requested with it
    event = event_of(http.get("/fn/urlecho/c", headers={"Cookie": "session=abc; theme=dark"}))

    # then they are listed in event["cookies"] and not left among the headers
    assert event["cookies"] == ["session=abc", "theme=dark"]
    assert "cookie" not in event["headers"]


def test_a_text_body_arrives_as_text(http: httpx.Client) -> None:
    # given a text/plain body
    # when it is posted to urlecho
    event = event_of(http.post("/fn/urlecho/t", content="héllo text", headers={"Content-Type": "text/plain"}))

    # then the body is the text itself, not base64
    assert event["body"] == "héllo text"
    assert event["isBase64Encoded"] is False


def test_a_json_body_arrives_as_text(http: httpx.Client) -> None:
    # given a JSON body
    # when it is posted to urlecho
    event = event_of(http.post("/fn/urlecho/j", json={"a": 1}))

    # then the body is the JSON text
    assert json.loads(event["body"]) == {"a": 1}
    assert event["isBase64Encoded"] is False


def test_a_binary_body_arrives_base64_encoded(http: httpx.Client) -> None:
    # given bytes that are not text
    raw = b"\x00\x01\xfe\xffbinary"

    # when they are posted to urlecho as application/octet-stream
    event = event_of(http.post("/fn/urlecho/b", content=raw, headers={"Content-Type": "application/octet-stream"}))

    # then the body is their base64, flagged as such
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw


def test_a_request_without_body_has_no_body_key(http: httpx.Client) -> None:
    # given a GET without a body, when urlecho is requested
    event = event_of(http.get("/fn/urlecho/nobody"))

    # then there is no body in the event
    assert "body" not in event
    assert event["isBase64Encoded"] is False


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_the_http_method_reaches_the_event(http: httpx.Client, method: str) -> None:
    # given urlecho, when requested with a method
    response = http.request(method, "/fn/urlecho/m")

    # then the event names that method
    assert event_of(response)["requestContext"]["http"]["method"] == method


def test_the_events_request_id_is_the_answers_x_request_id(http: httpx.Client) -> None:
    # given urlecho, when requested
    response = http.get("/fn/urlecho/id")

    # then the invocation's request id is the one the answer carries
    request_id = response.headers["x-request-id"]
    assert request_id
    assert event_of(response)["requestContext"]["requestId"] == request_id


# ---------------------------------------------------------------- result -> response


def test_a_described_response_sets_status_headers_and_body(http: httpx.Client) -> None:
    # given urlecho answers other paths with statusCode 200, header x-echo and a JSON body
    response = http.get("/fn/urlecho/anything")

    # then those become the HTTP answer; content-type defaults to application/json
    assert response.status_code == 200
    assert response.headers["x-echo"] == "yes"
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content)["rawPath"] == "/anything"


def test_a_bare_value_is_served_as_json_with_status_200(http: httpx.Client) -> None:
    # given urlecho returns a plain dict (no statusCode) for /bare
    response = http.get("/fn/urlecho/bare")

    # then it is the JSON body of a 200
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"hello": "world"}


def test_a_base64_response_body_is_decoded_to_bytes(http: httpx.Client) -> None:
    # given urlecho returns a base64 PNG body with isBase64Encoded for /binary
    response = http.get("/fn/urlecho/binary")

    # then the caller gets the raw bytes with the handler's content-type
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == b"\x89PNG\x00\x01"
    assert response.headers["content-length"] == str(len(b"\x89PNG\x00\x01"))


def test_response_cookies_become_one_set_cookie_header_each(http: httpx.Client) -> None:
    # given urlecho answers /cookies with 201 and two cookies
    response = http.get("/fn/urlecho/cookies")

    # then the status is 201 and each cookie is its own Set-Cookie header
    assert response.status_code == 201
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2"]
    assert response.text == "set"


def test_a_string_status_and_an_object_body_are_taken_as_aws_takes_them(http: httpx.Client) -> None:
    # given urlecho, which answers /teapot with "statusCode": "418" and a dict as its body
    response = http.get("/fn/urlecho/teapot")
    # then the status is 418 and the body the dict's JSON, as on AWS (not a 502)
    assert response.status_code == 418
    assert response.json() == {"short": True, "stout": [1, 2]}


def test_a_failing_handler_gives_502_internal_server_error(http: httpx.Client) -> None:
    # given urlecho raises for /fail
    response = http.get("/fn/urlecho/fail")

    # then the caller sees 502 and AWS's generic message, never the error's details
    assert response.status_code == 502
    assert response.text == "Internal Server Error"
    assert response.headers["content-type"].startswith("text/plain")
    assert "url handler failed" not in response.text
    assert response.headers["x-request-id"]


def test_a_function_without_an_http_event_has_no_url(http: httpx.Client) -> None:
    # given echo, which exists but has no http event
    response = http.get("/fn/echo/anything")

    # then 404
    assert response.status_code == 404
    assert response.headers["x-request-id"]


def test_an_unknown_function_has_no_url(http: httpx.Client) -> None:
    # given no function named "nosuchfunction"
    response = http.post("/fn/nosuchfunction", content=b"x")

    # then 404
    assert response.status_code == 404
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/fn/urlecho/anything", "/fn/urlecho/bare", "/fn/urlecho/binary",
                                  "/fn/urlecho/cookies", "/fn/urlecho/fail", "/fn/echo", "/fn/nosuchfunction"])
def test_every_answer_carries_a_request_id(http: httpx.Client, path: str) -> None:
    # given any function URL request, when it is answered
    response = http.get(path)

    # then it carries an X-Request-Id
    assert response.headers.get("x-request-id")
