from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from .helpers import UNJAILED, Gateway, RedisServer, fresh_redis_url, start_gateway


@pytest.fixture(scope="session")
def redis_base_url() -> str:
    url = os.environ.get("LAMBENT_TEST_REDIS_URL")
    if not url:
        pytest.fail("LAMBENT_TEST_REDIS_URL is not set: run the tests with `make test`, which starts Redis")
    return url


@pytest.fixture
def redis_url(redis_base_url: str) -> str:
    """A clean Redis database for one test."""
    return fresh_redis_url(redis_base_url)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    """A real `lambent serve` with the test functions, shared by the tests of one module."""
    workdir: Path = tmp_path_factory.mktemp("gateway")
    gw = start_gateway(workdir, fresh_redis_url(redis_base_url),
                       env={"AWS_SECRET_ACCESS_KEY": "server-secret", "DB_PASSWORD": "hunter2"})
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def host_gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    """As `gateway`, unjailed: for functions that coordinate through a folder of the host (see UNJAILED)."""
    gw = start_gateway(tmp_path_factory.mktemp("host-gateway"), fresh_redis_url(redis_base_url), config=UNJAILED)
    yield gw
    gw.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to kill and start again (helpers.RedisServer); stopped after the test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def admin(gateway: Gateway) -> Any:
    """boto3's Lambda client of the module's gateway, with its generated admin key."""
    from .test_lambda_api import client

    assert gateway.admin_secret
    return client(gateway, "local-admin", gateway.admin_secret)


@pytest.fixture(scope="module")
def unchecked(gateway: Gateway) -> Any:
    """As `admin`, but botocore checks no parameters itself: the server's answer is what is seen."""
    from .test_lambda_api import client

    assert gateway.admin_secret
    return client(gateway, "local-admin", gateway.admin_secret, parameter_validation=False)


@pytest.fixture(scope="session")
def sqs_endpoint() -> str:
    """The real ElasticMQ (SQS API) that `make test` started: http://127.0.0.1:PORT (tests/sqs_client.py)."""
    endpoint = os.environ.get("LAMBENT_TEST_SQS_ENDPOINT")
    if not endpoint:
        pytest.fail("LAMBENT_TEST_SQS_ENDPOINT is not set: run the tests with `make test`, which starts ElasticMQ "
                    "(or scripts/elasticmq.sh start DIR, and pass the URL it prints)")
    return endpoint
