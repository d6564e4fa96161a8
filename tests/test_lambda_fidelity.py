"""Public Lambda code, written as its projects' docs show and installed through requirements.txt as a user
would, runs here unchanged and sees what it sees on Lambda."""

from __future__ import annotations

import json
import textwrap
from typing import Iterator

import pytest

from .helpers import Gateway, fresh_redis_url, gateway_with_function, wait_until

# aws-lambda-powertools' Logger and Tracer, as its documentation's first examples use them.
POWERTOOLS = textwrap.dedent('''
    from aws_lambda_powertools import Logger, Tracer
    from aws_lambda_powertools.utilities.typing import LambdaContext

    logger = Logger(service="payment")
    tracer = Tracer(service="payment")


    @tracer.capture_method
    def collect_payment(charge_id: str) -> dict:
        return {"charge_id": charge_id, "status": "collected"}


    @logger.inject_lambda_context
    @tracer.capture_lambda_handler
    def lambda_handler(event: dict, context: LambdaContext) -> dict:
        logger.info("Collecting payment")
        return collect_payment(event.get("charge_id", "ch_1"))
    ''')


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    yield from gateway_with_function(tmp_path_factory.mktemp("fidelity"), fresh_redis_url(redis_base_url), "payment", {
        "handler.py": POWERTOOLS, "function.yaml": "handler: handler.lambda_handler\ntimeout: 10\n",
        "requirements.txt": "aws-lambda-powertools[tracer]==3.37.0\n"})


def logs_of(gateway: Gateway, request_id: str) -> str:
    records = wait_until(lambda: gateway.request("GET", "/functions/payment/logs",
                                                 params={"request_id": request_id}).json()["records"],
                         message="the invocation's logs")
    return str(records[0]["text"])


def test_powertools_logger_reports_the_xray_trace_id_and_tracer_stays_silent(gateway: Gateway) -> None:
    # given a caller in a trace
    root = "1-5759e988-bd862e3fe1be46a994272793"
    # when the powertools function is invoked
    response = gateway.invoke("payment", {"charge_id": "ch_42"},
                              headers={"X-Amzn-Trace-Id": f"Root={root};Parent=53995c3f42cd8ad8;Sampled=0"})
    # then it answers, its Logger's JSON line names the trace as on Lambda, and its Tracer warns of nothing
    assert response.status_code == 200, response.text
    assert response.json() == {"charge_id": "ch_42", "status": "collected"}
    text = logs_of(gateway, response.headers["x-request-id"])
    [line] = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert line["message"] == "Collecting payment" and line["service"] == "payment"
    assert line["xray_trace_id"] == root
    assert line["function_request_id"] == response.headers["x-request-id"]
    assert line["cold_start"] is True
    for noise in ("discarded", "cannot find the current segment", "Traceback", "WARNING", "ERROR"):
        assert noise not in text, text
