"""Function URLs: a request to `NAME.<gateway.url_domain>` (or the fallback `/fn/NAME/...`) becomes a
payload-2.0 event as AWS fills it, and the function's result becomes the HTTP answer."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from typing import Any, Iterator

import httpx
import pytest

from runtime.config import Config, ConfigError

from .helpers import EXAMPLE_FUNCTIONS, TEST_FUNCTIONS, Gateway, fresh_redis_url, start_gateway

TRACE_ROOT = re.compile(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24}")


@pytest.fixture(scope="module")
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client(anonymous=True) as client:      # a function URL's callers are the public
        yield client


def port_of(gateway: Gateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def url(gateway: Gateway) -> Iterator[httpx.Client]:
    """urlecho's own function URL, http://urlecho.lambda-url.localhost:PORT/, as a public caller reaches it
    (the Host header names it; this machine's resolver may not know *.localhost, which browsers and curl do)."""
    with gateway.client(anonymous=True, headers={"Host": f"urlecho.lambda-url.localhost:{port_of(gateway)}"}) as client:
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


# ---------------------------------------------------------------- the function URL's own host


def test_a_function_url_host_reaches_its_function_with_the_whole_path(url: httpx.Client) -> None:
    # given urlecho's host, when a nested path is requested
    event = event_of(url.get("/items/3"))
    # then the event's path is the request's own, from "/"
    assert event["rawPath"] == event["requestContext"]["http"]["path"] == "/items/3"


def test_the_root_of_a_function_url_host_is_slash(url: httpx.Client) -> None:
    assert event_of(url.get("/"))["rawPath"] == "/"


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/healthz", "/functions", "/functions/urlecho",
                                  "/metrics", "/console", "/fn/urlecho/x", "/2015-03-31/functions"])
def test_nothing_of_lambents_own_api_answers_on_a_function_url_host(url: httpx.Client, path: str) -> None:
    # given paths that are Lambent's own API (some of them needing a key) on the gateway's host
    # when they are requested, without a key, on urlecho's host
    event = event_of(url.get(path))
    # then urlecho answers each of them, with the path as requested
    assert event["rawPath"] == path


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_on_a_function_url_host_reaches_the_function(url: httpx.Client, method: str) -> None:
    event = event_of(url.request(method, "/functions/urlecho/invoke", content=b'{"a": 1}',
                                 headers={"Content-Type": "application/json"}))
    assert event["requestContext"]["http"]["method"] == method
    assert event["rawPath"] == "/functions/urlecho/invoke"


def test_a_head_request_on_a_function_url_host_reaches_the_function(url: httpx.Client) -> None:
    response = url.head("/anything")
    assert response.status_code == 200 and response.headers["x-echo"] == "yes"
    assert response.content == b""


def test_the_request_context_names_the_function_urls_domain_as_aws_does(gateway: Gateway, url: httpx.Client) -> None:
    # given urlecho's host, when it is requested
    context = event_of(url.get("/ctx"))["requestContext"]
    # then domainName is the host without its port, and domainPrefix and apiId are the function URL's id
    assert context["domainName"] == "urlecho.lambda-url.localhost"
    assert context["domainPrefix"] == "urlecho"
    assert context["apiId"] == "urlecho"
    assert context["http"]["sourceIp"] == "127.0.0.1"


def test_the_event_has_the_headers_aws_adds_and_no_hop_by_hop_ones(gateway: Gateway, url: httpx.Client) -> None:
    # given a caller that sends hop-by-hop headers (httpx itself sends Connection: keep-alive)
    # and forwarded headers of its own, which nobody vouches for
    response = url.get("/h", headers={"Keep-Alive": "timeout=5", "TE": "trailers", "Upgrade": "h2c",
                                      "X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https"})
    # then the event has what the gateway saw, as AWS's front end adds it, and no connection-level header
    headers = event_of(response)["headers"]
    assert headers["host"] == f"urlecho.lambda-url.localhost:{port_of(gateway)}"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-port"] == str(port_of(gateway))
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert TRACE_ROOT.fullmatch(headers["x-amzn-trace-id"])
    for hop in ("connection", "keep-alive", "te", "upgrade", "transfer-encoding", "trailer", "proxy-connection"):
        assert hop not in headers


def test_the_event_carries_the_invocations_trace(url: httpx.Client) -> None:
    # given no trace header from the caller, when urlecho's URL is requested
    response = url.get("/trace")
    # then the event's x-amzn-trace-id is the Root of the trace the function runs in (_X_AMZN_TRACE_ID)
    header = event_of(response)["headers"]["x-amzn-trace-id"]
    assert response.headers["x-trace-env"].startswith(header + ";Parent=")


def test_a_callers_trace_header_is_passed_through(url: httpx.Client) -> None:
    # given a caller in a trace
    incoming = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    # when it requests urlecho's URL
    response = url.get("/trace", headers={"X-Amzn-Trace-Id": incoming})
    # then the event carries its header as sent, and the function runs in that trace
    assert event_of(response)["headers"]["x-amzn-trace-id"] == incoming
    assert response.headers["x-trace-env"] == incoming


def test_a_function_url_host_is_matched_without_case(gateway: Gateway) -> None:
    host = f"UrlEcho.Lambda-URL.LocalHost:{port_of(gateway)}"
    with gateway.client(anonymous=True, headers={"Host": host}) as client:
        assert event_of(client.get("/case"))["requestContext"]["domainName"] == "urlecho.lambda-url.localhost"


@pytest.mark.parametrize("label", ["echo", "nosuchfunction", "a.b", "urlecho:1", "-"])
def test_a_host_of_no_function_url_is_404_and_not_lambents_api(gateway: Gateway, label: str) -> None:
    # given a host under the function URL domain whose label is not a function with an http event
    with gateway.client(anonymous=True, headers={"Host": f"{label}.lambda-url.localhost"}) as client:
        # when Lambent's own paths are requested there
        for path in ("/", "/healthz", "/openapi.json"):
            response = client.get(path)
            # then each is a 404 of that host, never the API's answer
            assert response.status_code == 404, (path, response.text)
            assert response.json()["error"] == "NotFound"
            assert response.headers["x-request-id"]


def test_the_bare_url_domain_and_other_hosts_are_lambents_api(gateway: Gateway) -> None:
    for host in ("lambda-url.localhost", "urlecho.lambda-url.localhost.example", "localhost"):
        with gateway.client(anonymous=True, headers={"Host": host}) as client:
            assert client.get("/healthz").status_code == 200, host


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl resolves *.localhost itself; it is not installed")
def test_curl_reaches_a_function_url_by_its_name(gateway: Gateway) -> None:
    # given curl, which resolves *.localhost to loopback as browsers do
    address = f"http://urlecho.lambda-url.localhost:{port_of(gateway)}/from/curl?x=1"
    # when it requests urlecho's URL by name
    done = subprocess.run(["curl", "-sS", "--max-time", "20", address], capture_output=True, timeout=30)
    # then urlecho answers with the path and query it was sent
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout)
    assert event["rawPath"] == "/from/curl" and event["rawQueryString"] == "x=1"
    assert event["requestContext"]["domainName"] == "urlecho.lambda-url.localhost"


# ---------------------------------------------------------------- the /fn/ fallback


def test_the_fallback_fills_the_same_fields_with_the_gateways_host(gateway: Gateway, http: httpx.Client) -> None:
    # given urlecho reached at /fn/urlecho on the gateway's own host
    event = event_of(http.get("/fn/urlecho/items"))
    # then the domain is the gateway's host, the id the function's, and AWS's headers are there
    context = event["requestContext"]
    assert context["domainName"] == "127.0.0.1"
    assert context["apiId"] == context["domainPrefix"] == "urlecho"
    assert event["headers"]["x-forwarded-port"] == str(port_of(gateway))
    assert event["headers"]["x-forwarded-proto"] == "http"
    assert event["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert "connection" not in event["headers"]


def test_the_fallbacks_raw_path_keeps_the_encoding_it_was_sent_with(http: httpx.Client) -> None:
    assert event_of(http.get("/fn/urlecho/a%20b/c%2Fd"))["rawPath"] == "/a%20b/c%2Fd"


# ---------------------------------------------------------------- gateway.url_domain


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    """A gateway behind a reverse proxy on loopback, its function URLs under fn.example.test, invoke keys required."""
    config = {"gateway": {"url_domain": "Fn.Example.Test", "trusted_proxies": ["127.0.0.0/8"]},
              "auth": {"require_invoke_key": True,
                       "keys": [{"id": "app", "secret_env": "TEST_APP_SECRET", "role": "invoke"}]}}
    gw = start_gateway(tmp_path_factory.mktemp("url-domain"), fresh_redis_url(redis_base_url),
                       functions_dir=TEST_FUNCTIONS, config=config, env={"TEST_APP_SECRET": "app-secret"})
    yield gw
    gw.stop()


def test_function_urls_answer_under_the_configured_domain(keyed: Gateway) -> None:
    with keyed.client(headers={"Host": "urlecho.fn.example.test", "Authorization": "Bearer app-secret"}) as client:
        assert event_of(client.get("/docs"))["requestContext"]["domainName"] == "urlecho.fn.example.test"
    with keyed.client(anonymous=True, headers={"Host": "urlecho.lambda-url.localhost"}) as client:
        assert client.get("/healthz").status_code == 200          # not a function URL host here


def test_behind_a_trusted_proxy_the_event_has_the_callers_scheme_port_and_address(keyed: Gateway) -> None:
    # given a TLS-terminating proxy that forwards https://urlecho.fn.example.test/ with its X-Forwarded-* headers
    headers = {"Host": "urlecho.fn.example.test", "Authorization": "Bearer app-secret",
               "X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.9"}
    with keyed.client(headers=headers) as client:
        event = event_of(client.get("/p"))
    # then the function sees the request as its caller made it, as on AWS
    assert event["headers"]["x-forwarded-proto"] == "https"
    assert event["headers"]["x-forwarded-port"] == "443"
    assert event["headers"]["x-forwarded-for"] == "198.51.100.9"
    assert event["requestContext"]["http"]["sourceIp"] == "198.51.100.9"


def test_with_invoke_keys_required_a_function_url_host_needs_an_invoke_key(keyed: Gateway) -> None:
    # given a gateway that requires invoke keys
    with keyed.client(anonymous=True, headers={"Host": "urlecho.fn.example.test"}) as client:
        # when its function URL is requested without a key, on a path that is open on the API
        response = client.get("/healthz")
    # then it is refused as an invocation without a key is
    assert response.status_code == 401, response.text


@pytest.mark.parametrize("domain", ["", "bad_domain", "-x.example", "x..example", "a" * 64 + ".example"])
def test_a_url_domain_that_is_not_a_dns_name_is_a_config_error(domain: str) -> None:
    with pytest.raises(ConfigError, match="gateway.url_domain"):
        Config.load(None, environ={"LAMBENT_GATEWAY__URL_DOMAIN": domain})


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


# ---------------------------------------------------------------- the example todo app (functions/todo)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    """A gateway with README's example functions (functions/)."""
    gw = start_gateway(tmp_path_factory.mktemp("examples"), fresh_redis_url(redis_base_url),
                       functions_dir=EXAMPLE_FUNCTIONS)
    yield gw
    gw.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's line is a curl command; curl is not installed")
def test_todo_takes_the_json_that_curl_sends_with_its_default_form_content_type(examples: Gateway) -> None:
    # given curl -d, which sends application/x-www-form-urlencoded: the event's body is base64, as on AWS
    done = subprocess.run(["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", "-X", "POST",
                           f"{examples.url}/fn/todo/items", "-d", '{"title": "milk"}'],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    body, status = done.stdout.rsplit("\n", 1)
    # then todo decodes it, as a Lambda handler does when isBase64Encoded is true, and keeps the item
    assert status == "201", body
    item = json.loads(body)
    assert item["title"] == "milk" and item["done"] is False
    with examples.client(anonymous=True) as client:
        assert client.get(f"/fn/todo/items/{item['id']}").json() == item


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "application/json", None])
def test_todo_adds_an_item_whatever_the_bodys_content_type(examples: Gateway, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    with examples.client(anonymous=True) as client:
        response = client.post("/fn/todo/items", content=b'{"title": "bread"}', headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["title"] == "bread"


def test_todo_refuses_a_form_body_that_is_not_json_with_a_clear_message(examples: Gateway) -> None:
    with examples.client(anonymous=True) as client:
        response = client.post("/fn/todo/items", data={"title": "milk"})      # title=milk, form-encoded
    assert response.status_code == 400
    assert response.json() == {"message": "the body must be JSON"}
