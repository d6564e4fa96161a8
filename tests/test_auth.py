"""Keys at the gateway: admin operations, optional invoke keys, Bearer secrets and boto3's SigV4."""

from __future__ import annotations

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
    # Even from loopback: an admin key is configured, so loopback alone is not enough.
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


def test_without_an_admin_key_admin_operations_come_from_loopback_only(tmp_path: Path, redis_url: str) -> None:
    gateway = start_gateway(tmp_path / "open", redis_url, functions_dir=EXAMPLE_FUNCTIONS)
    try:
        assert httpx.get(f"{gateway.url}/functions/hello/dlq", timeout=5).status_code == 200   # we are loopback
        # boto3 always signs; with no key required, its made-up credentials do not stand in the way.
        client = aws(gateway, "any", "any")
        assert client.invoke(FunctionName="hello", Payload=b"{}")["StatusCode"] == 200
    finally:
        gateway.stop()


def test_with_invoke_keys_only_a_loopback_caller_holding_one_may_also_run_admin_operations(
        tmp_path: Path, redis_url: str) -> None:
    config = {"auth": {"require_invoke_key": True, "keys": [
        {"id": "app", "secret_env": "TEST_APP_SECRET", "role": "invoke"}]}}
    gateway = start_gateway(tmp_path / "invoke-only", redis_url, functions_dir=EXAMPLE_FUNCTIONS, config=config,
                            env=SECRETS)
    try:
        key = bearer(SECRETS["TEST_APP_SECRET"])
        assert httpx.get(f"{gateway.url}/functions", headers=key, timeout=5).status_code == 200
        assert httpx.get(f"{gateway.url}/functions/hello/dlq", headers=key, timeout=5).status_code == 200
        assert httpx.get(f"{gateway.url}/functions", timeout=5).status_code == 401      # invoking needs the key
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
            assert set(response.json()) == {"error", "message", "requestId"}


def test_environment_values_are_shown_to_admin_keys_only(keyed: Gateway) -> None:
    url = f"{keyed.url}/functions/hello"
    as_invoker = httpx.get(url, headers=bearer(SECRETS["TEST_APP_SECRET"]), timeout=5).json()
    as_admin = httpx.get(url, headers=bearer(SECRETS["TEST_OPS_SECRET"]), timeout=5).json()
    assert as_invoker["configuration"]["environment"] == {"GREETING": "***"}      # the names, not the values
    assert as_admin["configuration"]["environment"] == {"GREETING": "Hello"}
