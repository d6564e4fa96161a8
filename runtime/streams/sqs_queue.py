"""The SQS-compatible server as the pollers reach it: a boto3 client with the configured credentials, and its
faults said in words the mapping's state shows (`QueueFault`)."""

from __future__ import annotations

import logging
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from ..config import Config

log = logging.getLogger(__name__)

_NO_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_CREDENTIALS_WARNED = False


class QueueFault(Exception):
    """The queue server did not do what was asked; `reason` is what the mapping's state shows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sqs_client(config: Config, *, pollers: int = 1) -> Any:
    """A boto3 SQS client of the configured server: with sqs.access_key_id / secret_access_key when set, else as
    boto3 finds credentials; when it finds none and an endpoint is configured, placeholder ones (only an ElasticMQ
    run without its guard, LAMBENT_SQS_UNGUARDED=1, takes them)."""
    global _CREDENTIALS_WARNED
    settings = config.sqs
    session = boto3.session.Session()
    options: dict[str, Any] = {}
    if settings.access_key_id and settings.secret_access_key:
        options = {"aws_access_key_id": settings.access_key_id,
                   "aws_secret_access_key": settings.secret_access_key.get_secret_value()}
    elif session.get_credentials() is None and settings.endpoint_url:
        options = {"aws_access_key_id": "lambent", "aws_secret_access_key": "lambent"}
        if not _CREDENTIALS_WARNED:
            _CREDENTIALS_WARNED = True
            log.warning("no SQS credentials: set sqs.access_key_id and sqs.secret_access_key (ElasticMQ's guard "
                        "refuses anything else); signing with placeholders, which only an unguarded ElasticMQ takes",
                        extra={"endpoint": settings.endpoint_url})
    return session.client(
        "sqs", endpoint_url=settings.endpoint_url, region_name=settings.region or config.region, **options,
        config=BotoConfig(connect_timeout=2, read_timeout=settings.wait_time_s + 10,
                          retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=pollers + 2))


def fault_reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _NO_QUEUE:
            return "the queue does not exist: create it, or correct `queue` in function.yaml"
        return f"{code}: {exc.response.get('Error', {}).get('Message', '')}".strip()
    return f"the queue server cannot be reached ({type(exc).__name__}): is it running at the configured " \
           "sqs.endpoint_url?"
