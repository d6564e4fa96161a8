"""Keys at the gateway: admin operations, optional invoke keys, Bearer secrets and boto3's SigV4."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any, Iterator

import boto3
import httpx
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from .helpers import EXAMPLE_FUNCTIONS, Gateway, start_gateway
from .test_cli import lambent

KEYS = {"auth": {"require_invoke_key": True, "keys": [
    {"id": "ops", "secret_env": "TEST_OPS_SECRET", "role": "admin"},
    {"id": "app", "secret_env": "TEST_APP_SECRET", "role": "invoke"}]}}
SECRETS = {"TEST_OPS_SECRET": "ops-secret-value", "TEST_APP_SECRET": "app-secret-value"}


def keyed_gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str, name: str,
                  config: dict[str, Any]) -> Iterator[Gateway]:
    """The example functions behind a gateway with the test keys, for one module."""
    from .helpers import fresh_redis_url

    gateway = start_gateway(tmp_path_factory.mktemp(name), fresh_redis_url(redis_base_url),
                            functions_dir=EXAMPLE_FUNCTIONS, config=config, env=SECRETS)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    yield from keyed_gateway(tmp_path_factory, redis_base_url, "secured", KEYS)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def signed_get(url: str, key_id: str, secret: str) -> httpx.Response:
    """GET `url` signed with SigV4 as botocore signs, for the routes boto3 has no operation for."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials(key_id, secret), "lambda", "us-east-1").add_auth(request)
    return httpx.get(url, headers=dict(request.headers), timeout=5)


def aws(gateway: Gateway, key_id: str, secret: str) -> Any:
    return boto3.client("lambda", endpoint_url=gateway.url, region_name="us-east-1", aws_access_key_id=key_id,
                        aws_secret_access_key=secret, config=BotoConfig(retries={"total_max_attempts": 1}))


def test_invocation_needs_a_key_when_configured(secured: Gateway) -> None:
    missing = secured.invoke("hello", {"name": "x"})
    assert missing.status_code == 401 and missing.json()["error"] == "MissingAuthenticationTokenException"
    assert "x-request-id" in missing.headers
    wrong = secured.invoke("hello", {}, headers=bearer("not-a-secret"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "InvalidToken"
    for secret in SECRETS.values():                       # invoke and admin keys may both invoke
        assert secured.invoke("hello", {"name": "k"}, headers=bearer(secret)).status_code == 200


def test_admin_operations_need_the_admin_key(secured: Gateway) -> None:
    url = f"{secured.url}/functions/hello/dlq"
    assert httpx.get(url, timeout=5).status_code == 401
    forbidden = httpx.get(url, headers=bearer(SECRETS["TEST_APP_SECRET"]), timeout=5)
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "AccessDeniedException"
    assert httpx.get(url, headers=bearer(SECRETS["TEST_OPS_SECRET"]), timeout=5).status_code == 200
    # No address is trusted: from loopback too, no key is no admin.
    assert httpx.delete(f"{secured.url}/functions/hello", timeout=5).status_code == 401
    assert httpx.get(f"{secured.url}/healthz", timeout=5).status_code == 200     # open


def test_boto3_signing_with_a_key_id_and_secret_is_verified(secured: Gateway) -> None:
    response = aws(secured, "app", SECRETS["TEST_APP_SECRET"]).invoke(FunctionName="hello", Payload=b'{"name": "v4"}')
    assert response["StatusCode"] == 200
    with pytest.raises(ClientError) as wrong:
        aws(secured, "app", "a-wrong-secret").invoke(FunctionName="hello", Payload=b"{}")
    assert wrong.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert wrong.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as unknown:
        aws(secured, "nobody", "x").invoke(FunctionName="hello", Payload=b"{}")
    assert unknown.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_failed_attempts_are_logged_without_the_secret(secured: Gateway) -> None:
    secured.invoke("hello", {}, headers=bearer("guessing-1234"))
    log = secured.log()
    assert "InvalidToken" in log and "/functions/hello/invoke" in log
    assert "guessing-1234" not in log and SECRETS["TEST_OPS_SECRET"] not in log


def test_the_cli_sends_its_secret(secured: Gateway, tmp_path: Path) -> None:
    source = tmp_path / "keyed"
    source.mkdir()
    (source / "handler.py").write_text("def handler(e, c):\n    return 'keyed'\n")
    refused = lambent("deploy", str(source), "--url", secured.url, "--secret", SECRETS["TEST_APP_SECRET"])
    assert refused.returncode == 1 and "403" in refused.stderr
    done = lambent("deploy", str(source), "--url", secured.url, env={"LAMBENT_SECRET": SECRETS["TEST_OPS_SECRET"]})
    assert done.returncode == 0, done.stderr
    invoked = lambent("invoke", "keyed", "--url", secured.url, "--secret", SECRETS["TEST_APP_SECRET"])
    assert invoked.returncode == 0 and invoked.stdout.strip() == '"keyed"'


def test_without_an_admin_key_the_gateway_generates_one_and_no_address_stands_in_for_it(
        tmp_path: Path, redis_url: str) -> None:
    gateway = start_gateway(tmp_path / "open", redis_url, functions_dir=EXAMPLE_FUNCTIONS)
    try:
        key = gateway.data_dir / "admin.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        secret = key.read_text().strip()
        assert re.fullmatch(r"[0-9a-f]{64}", secret)
        assert f"admin key generated: {key}" in gateway.log() and secret not in gateway.log()
        dlq = f"{gateway.url}/functions/hello/dlq"
        # Loopback is no key, and neither is a proxy header claiming loopback (no gateway.trusted_proxies).
        for headers in ({}, {"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}):
            refused = httpx.delete(f"{gateway.url}/functions/hello", headers=headers, timeout=5)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"] == "MissingAuthenticationTokenException"
            assert "generated" in refused.json()["message"]
            assert httpx.get(dlq, headers=headers, timeout=5).status_code == 401
            assert httpx.get(f"{gateway.url}/functions", headers=headers, timeout=5).status_code == 401
        assert httpx.get(dlq, headers=bearer(secret), timeout=5).status_code == 200
        # boto3 always signs; with no key required, its made-up credentials do not stand in the way of
        # invoking, and the generated key signs as `local-admin`.
        assert aws(gateway, "any", "any").invoke(FunctionName="hello", Payload=b"{}")["StatusCode"] == 200
        assert signed_get(dlq, "local-admin", secret).status_code == 200
        assert signed_get(dlq, "any", "any").status_code == 403
        # The CLI on this host finds the key through the server's config; elsewhere it says what to do.
        assert lambent("functions", "--url", gateway.url, env=gateway.cli_env()).returncode == 0
        lost = lambent("functions", "--url", gateway.url, env={"LAMBENT_CONFIG": str(tmp_path / "none.yaml")})
        assert lost.returncode == 1 and "none.yaml: file not found" in lost.stderr, lost.stderr
        bare = lambent("functions", "--url", gateway.url, cwd=tmp_path)
        assert bare.returncode == 1 and "401" in bare.stderr and "LAMBENT_CONFIG" in bare.stderr, bare.stderr
        assert "Traceback" not in bare.stderr
    finally:
        gateway.stop()
    again = start_gateway(tmp_path / "open", redis_url, functions_dir=EXAMPLE_FUNCTIONS)
    try:                                         # a restart keeps the key: clients configured with it go on
        assert again.admin_secret == secret and f"admin key in use: {key}" in again.log()
    finally:
        again.stop()


def test_with_invoke_keys_only_admin_operations_still_need_the_generated_admin_key(
        tmp_path: Path, redis_url: str) -> None:
    config = {"auth": {"require_invoke_key": True, "keys": [
        {"id": "app", "secret_env": "TEST_APP_SECRET", "role": "invoke"}]}}
    gateway = start_gateway(tmp_path / "invoke-only", redis_url, functions_dir=EXAMPLE_FUNCTIONS, config=config,
                            env=SECRETS)
    try:
        key = bearer(SECRETS["TEST_APP_SECRET"])
        assert httpx.get(f"{gateway.url}/functions", headers=key, timeout=5).status_code == 200
        assert httpx.get(f"{gateway.url}/functions/hello/dlq", headers=key, timeout=5).status_code == 403
        assert httpx.get(f"{gateway.url}/functions", timeout=5).status_code == 401
        assert gateway.request("GET", "/functions/hello/dlq").status_code == 200       # the generated key
    finally:
        gateway.stop()


def test_proxy_headers_are_believed_from_trusted_proxies_only(tmp_path: Path, redis_url: str) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    for trusted, seen in (([], "127.0.0.1"), (["127.0.0.0/8"], "203.0.113.7"), (["10.0.0.1"], "127.0.0.1")):
        gateway = start_gateway(tmp_path / f"proxy-{len(trusted)}-{seen}", redis_url,
                                config={"gateway": {"trusted_proxies": trusted}})
        try:
            with gateway.client(anonymous=True) as client:
                answer = client.get("/fn/urlecho/ip", headers=forwarded)
            assert answer.status_code == 200, answer.text
            assert answer.json()["requestContext"]["http"]["sourceIp"] == seen, trusted
        finally:
            gateway.stop()


def _upload_without_a_key(url: str, size: int) -> str:
    """PUT `size` bytes of code with no key, on a raw socket (each wait bounded by 30 s); its status line."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    chunk = b"\0" * (1 << 20)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        conn.sendall(f"PUT /functions/bomb/code HTTP/1.1\r\nHost: x\r\nContent-Type: application/zip\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        try:
            for _ in range(size // len(chunk)):
                conn.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass                # the gateway may close the connection once it has answered
        answer = b""
        while b"\r\n" not in answer:
            more = conn.recv(4096)
            if not more:
                break
            answer += more
    return answer.split(b"\r\n", 1)[0].decode()


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def test_unauthenticated_uploads_are_refused_before_their_bodies_are_read(secured: Gateway) -> None:
    import concurrent.futures

    # given a gateway whose admin routes need a key, at rest
    before = _rss_mb(secured.process.pid)
    # when eight clients upload 45 MB of code each at once, without a key
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _upload_without_a_key(secured.url, 45 << 20), range(8)))
    # then each is refused with 401, and the gateway's memory stays flat
    assert all(answer.startswith("HTTP/1.1 401") for answer in answers), answers
    assert _rss_mb(secured.process.pid) - before < 50
    assert httpx.get(f"{secured.url}/healthz", timeout=5).status_code == 200


def _send_head(url: str, head: bytes, *, size: int = 0) -> str:
    """Send a request `head` (then `size` more bytes of one header's value, 1 MB at a time, if any) on a raw
    socket; the status line and the body of the answer (each wait bounded by 30 s)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        try:
            conn.sendall(head)
            for _ in range(size >> 20):
                conn.sendall(b"a" * (1 << 20))
            conn.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass                # the gateway closes the connection once it has answered
        answer = b""
        try:
            while more := conn.recv(65536):
                answer += more
        except ConnectionResetError:
            pass                # past the gateway's lingering close: the answer has come before
    status, _, rest = answer.partition(b"\r\n")
    return status.decode() + " " + rest.partition(b"\r\n\r\n")[2].decode()


def test_request_heads_past_the_caps_are_refused_with_431_and_cost_no_memory(secured: Gateway) -> None:
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    # given a gateway with the default caps (64 KB of request line and headers, 100 header fields)
    assert _send_head(secured.url, start + b"X-Fill: " + b"a" * 60_000).startswith("HTTP/1.1 200")
    # when a head is larger than 64 KB, or has more than 100 fields
    large = _send_head(secured.url, start + b"X-Fill: " + b"a" * 70_000)
    many = _send_head(secured.url, start + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"X-Last: v")
    # then each is refused with 431 and Lambent's JSON error naming the limit
    for answer, limit in ((large, "gateway.max_header_bytes"), (many, "gateway.max_headers")):
        status, _, body = answer.partition(" {")
        assert status == "HTTP/1.1 431 Request Header Fields Too Large", answer[:200]
        error = json.loads("{" + body)
        assert error["error"] == "RequestHeaderFieldsTooLarge" and limit in error["message"]
    # and eight clients sending a 64 MB header at once cost the gateway no memory: it stops reading at the cap
    import concurrent.futures

    before = _rss_mb(secured.process.pid)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _send_head(secured.url, start + b"X-Bomb: ", size=64 << 20), range(8)))
    assert all(answer.startswith("HTTP/1.1 431") for answer in answers), [a[:80] for a in answers]
    assert _rss_mb(secured.process.pid) - before < 50
    assert httpx.get(f"{secured.url}/healthz", timeout=5).status_code == 200


READ_KEYS = {"auth": {"require_invoke_key": False, "keys": KEYS["auth"]["keys"]}}
# Endpoint -> the status for no key, the invoke key and the admin key, with keys configured and invoke keys
# not required (README: "Who may call what").
TABLE = [
    ("GET", "/healthz", 200, 200, 200),
    ("GET", "/console", 200, 200, 200),
    ("POST", "/functions/hello/invoke", 200, 200, 200),
    ("GET", "/functions", 401, 200, 200),
    ("GET", "/functions/hello", 401, 200, 200),
    ("GET", "/functions/hello/logs", 401, 200, 200),
    ("GET", "/functions/hello/stats", 401, 200, 200),
    ("GET", "/functions/hello/streams", 401, 200, 200),
    ("GET", "/functions/hello/aliases", 401, 200, 200),
    ("GET", "/invocations/00000000-0000-0000-0000-000000000000", 401, 404, 404),
    ("GET", "/schedules", 401, 200, 200),
    ("GET", "/metrics", 401, 200, 200),
    ("GET", "/functions/hello/dlq", 401, 403, 200),
    ("DELETE", "/functions/nosuchfunction", 401, 403, 404),
    # The AWS Lambda API: invocations as above; the control plane's reads need a key, its writes the admin key
    # (501: an operation not built, in AWS's shape).
    ("POST", "/2015-03-31/functions/hello/invocations", 200, 200, 200),
    ("GET", "/2015-03-31/functions", 401, 200, 200),
    ("GET", "/2015-03-31/functions/hello", 401, 200, 200),
    ("GET", "/2015-03-31/functions/hello/configuration", 401, 200, 200),
    ("GET", "/2015-03-31/functions/hello/versions", 401, 200, 200),
    ("GET", "/2015-03-31/functions/hello/aliases", 401, 200, 200),
    ("GET", "/2015-03-31/functions/hello/aliases/nosuchalias", 401, 404, 404),
    ("GET", "/2019-09-30/functions/hello/concurrency", 401, 200, 200),
    ("GET", "/2016-08-19/account-settings", 401, 200, 200),
    ("GET", "/2019-09-25/functions/hello/event-invoke-config", 401, 404, 404),
    ("GET", "/2019-09-25/functions/hello/event-invoke-config/list", 401, 200, 200),
    ("GET", "/2015-03-31/event-source-mappings", 401, 200, 200),
    ("GET", "/2015-03-31/event-source-mappings/00000000-0000-0000-0000-000000000000", 401, 404, 404),
    ("GET", "/2021-10-31/functions/todo/url", 401, 200, 200),
    ("GET", "/2021-10-31/functions/todo/urls", 401, 200, 200),
    ("GET", "/2017-03-31/tags/arn:aws:lambda:us-east-1:000000000000:function:hello", 401, 200, 200),
    ("GET", "/2018-10-31/layers", 401, 501, 501),
    ("POST", "/2020-04-22/code-signing-configs", 401, 403, 501),
    ("DELETE", "/2018-10-31/layers/nosuchlayer/versions/1", 401, 403, 501),
    # The SNS Query API at /: Publish is an invocation (here: to a topic that does not exist, SNS's NotFound)
    ("POST", "/?Action=Publish&TopicArn=arn:aws:sns:us-east-1:000000000000:nosuch&Message=x", 404, 404, 404),
    # GetFunction's Code.Location is presigned: the route checks its signature, whoever calls
    ("GET", "/functions/hello/code/" + "0" * 64 + ".zip", 403, 403, 403),
]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    yield from keyed_gateway(tmp_path_factory, redis_base_url, "keyed", READ_KEYS)


@pytest.mark.parametrize("method, path, anonymous, invoker, admin", TABLE, ids=[f"{m} {p}" for m, p, *_ in TABLE])
def test_who_may_call_what_once_keys_are_configured(keyed: Gateway, method: str, path: str, anonymous: int,
                                                    invoker: int, admin: int) -> None:
    for headers, wanted in (({}, anonymous), (bearer(SECRETS["TEST_APP_SECRET"]), invoker),
                            (bearer(SECRETS["TEST_OPS_SECRET"]), admin)):
        response = httpx.request(method, f"{keyed.url}{path}", headers=headers, timeout=10,
                                 json={} if method == "POST" else None)
        assert response.status_code == wanted, (headers, response.text)
        if wanted in (401, 403):
            aws_api = re.match(r"/\d{4}-\d\d-\d\d/", path)       # AWS's error shape on its paths
            assert set(response.json()) == ({"Type", "message"} if aws_api else {"error", "message", "requestId"})


def test_environment_values_are_shown_to_admin_keys_only(keyed: Gateway) -> None:
    url = f"{keyed.url}/functions/hello"
    as_invoker = httpx.get(url, headers=bearer(SECRETS["TEST_APP_SECRET"]), timeout=5).json()
    as_admin = httpx.get(url, headers=bearer(SECRETS["TEST_OPS_SECRET"]), timeout=5).json()
    assert as_invoker["configuration"]["environment"] == {"GREETING": "***"}      # the names, not the values
    assert as_admin["configuration"]["environment"] == {"GREETING": "Hello"}
