"""Lambent's catalog records in the JSON shapes of the AWS Lambda API (botocore's lambda 2015-03-31 model, and
the responses AWS records for it): FunctionConfiguration, AliasConfiguration, FunctionEventInvokeConfig,
EventSourceMappingConfiguration, FunctionUrlConfig.

Where Lambent has no such setting the field says what Lambent does: TracingConfig PassThrough (X-Ray trace ids
pass through), SnapStart off, one placeholder Role (there is no IAM), the server's own Python and machine.
"""

from __future__ import annotations

import base64
import json
import math
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from fastapi import Request

from ...functions.catalog import LATEST, Version
from ...functions.spec import CorsSpec, Destination, KafkaEvent, SqsEvent
from ..common import services
from .shared import Published, stable_id

# A placeholder execution role, as LocalStack gives: Lambent runs functions without IAM.
ROLE = "arn:aws:iam::{account}:role/lambda-role"
_ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def aws_time(iso: str) -> str:
    """A catalog time (ISO 8601) as Lambda writes LastModified: 2024-01-01T00:00:00.000+0000."""
    moment = datetime.fromisoformat(iso).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def epoch(iso: str) -> float:
    """A catalog time as the model's `Date` type travels in JSON: seconds since the epoch."""
    return datetime.fromisoformat(iso).timestamp()


def runtime() -> str:
    """The Python the sandboxes run (the server's own unless sandbox.python says otherwise)."""
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True, kw_only=True)
class Shapes:
    """Builds the shapes for one request: the server's region and account, whether the caller may see
    environment values (admin keys only, as Lambent's own GET /functions/{name}), and the code sizes."""
    region: str
    account: str
    may_admin: bool
    code_sizes: Mapping[str, int]

    def arn(self, name: str, qualifier: str | None = None) -> str:
        base = f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"
        return f"{base}:{qualifier}" if qualifier else base

    def configuration(self, item: Published, *, arn_qualifier: str | None,
                      listing: bool = False) -> dict[str, Any]:
        """FunctionConfiguration. `arn_qualifier`: what FunctionArn ends with (the qualifier the caller wrote, an
        alias too; the label in lists of versions). `listing`: as ListFunctions, without the state fields."""
        version, spec = item.version, item.version.spec
        name = version.function
        logging: dict[str, Any] = {"LogFormat": spec.logging.format, "LogGroup": f"/aws/lambda/{name}"}
        if spec.logging.is_json:
            logging["ApplicationLogLevel"] = spec.logging.application_log_level or "INFO"
            logging["SystemLogLevel"] = spec.logging.system_log_level or "INFO"
        body: dict[str, Any] = {
            "FunctionName": name,
            "FunctionArn": self.arn(name, arn_qualifier),
            "Runtime": runtime(),
            "Role": ROLE.format(account=self.account),
            "Handler": spec.handler,
            "CodeSize": self.code_sizes.get(version.code_hash, 0),
            "Description": spec.description,
            "Timeout": math.ceil(spec.timeout_s),          # Lambda's is whole seconds; Lambent's may be less
            "MemorySize": spec.memory_mb,
            "LastModified": aws_time(version.created),
            "CodeSha256": code_sha256(version),
            "Version": item.label,
            "TracingConfig": {"Mode": "PassThrough"},
            "RevisionId": revision_id(item),
            "PackageType": "Zip",
            "Architectures": [_ARCHITECTURES.get(platform.machine().lower(), "x86_64")],
            "EphemeralStorage": {"Size": spec.ephemeral_storage_mb},
            "LoggingConfig": logging,
            "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"},
        }
        if spec.environment:
            # Environment values are often secrets: shown to admin keys, named to the others.
            body["Environment"] = {"Variables": dict(spec.environment) if self.may_admin
                                   else {variable: "***" for variable in spec.environment}}
        if not listing:
            # A deploy is checked (the handler imports) before it is stored: what the catalog has is ready.
            body.update(State="Active", LastUpdateStatus="Successful")
        return body

    def alias(self, name: str, alias: str, number: int) -> dict[str, Any]:
        return {"AliasArn": self.arn(name, alias), "Name": alias, "FunctionVersion": str(number),
                "Description": "", "RevisionId": stable_id(f"alias:{name}:{alias}:{number}")}

    def destination(self, destination: Destination | None) -> dict[str, Any]:
        """OnSuccess / OnFailure: a function or an SNS topic by its ARN, a Kafka topic as Lambda writes one
        (kafka://topic)."""
        if destination is None:
            return {}
        if destination.function is not None:
            name, _, qualifier = destination.function.partition(":")
            return {"Destination": self.arn(name, qualifier or None)}
        if destination.sns is not None:
            return {"Destination": f"arn:aws:sns:{self.region}:{self.account}:{destination.sns}"}
        return {"Destination": f"kafka://{destination.topic}"}

    def event_invoke_config(self, item: Published, *, arn_qualifier: str) -> dict[str, Any]:
        """FunctionEventInvokeConfig from function.yaml's `async` (its retry_delays have no Lambda field)."""
        settings = item.version.spec.async_
        return {"LastModified": epoch(item.version.created),
                "FunctionArn": self.arn(item.version.function, arn_qualifier),
                "MaximumRetryAttempts": settings.max_retry_attempts,
                "MaximumEventAgeInSeconds": settings.max_event_age_s,
                "DestinationConfig": {"OnSuccess": self.destination(settings.on_success),
                                      "OnFailure": self.destination(settings.on_failure)}}

    def event_source_mapping(self, version: Version, index: int, event: KafkaEvent, bootstrap_servers: str | None,
                             *, state: str | None = None) -> dict[str, Any]:
        """EventSourceMappingConfiguration of a `kafka` event: a self-managed Apache Kafka mapping. `state`: what
        a write answers (Creating, Updating, Deleting, as Lambda's), instead of the state a read sees."""
        name = version.function
        group = event.group(name, index)
        mapping = stable_id(group)
        return {
            "UUID": mapping,
            "StartingPosition": event.starting_position,
            "BatchSize": event.batch_size,
            # Whole seconds on Lambda, where 0 means its default of 500 ms: Lambent's default is that 0.5 s.
            "MaximumBatchingWindowInSeconds": math.floor(event.batch_window_s),
            "FunctionArn": self.arn(name, None if event.qualifier == LATEST else event.qualifier),
            "LastModified": epoch(version.created),
            "State": state or ("Enabled" if bootstrap_servers else "Disabled"),
            "StateTransitionReason": "USER_INITIATED" if bootstrap_servers
            else "No Kafka: the server has no kafka_bootstrap_servers",
            "DestinationConfig": {"OnFailure": self.destination(event.on_failure)},
            "Topics": [event.topic],
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [
                server.strip() for server in (bootstrap_servers or "").split(",") if server.strip()]}},
            "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group},
            "MaximumRecordAgeInSeconds": event.max_record_age_s,
            "BisectBatchOnFunctionError": event.bisect_on_error,
            "MaximumRetryAttempts": event.max_retry_attempts,
            "FunctionResponseTypes": ["ReportBatchItemFailures"] if event.report_batch_item_failures else [],
            "EventSourceMappingArn": f"arn:aws:lambda:{self.region}:{self.account}:event-source-mapping:{mapping}",
        }

    def sqs_event_source_mapping(self, version: Version, event: SqsEvent, *, uuid: str, queue_arn: str,
                                 last_result: str, endpoint_url: str | None, state: str | None = None
                                 ) -> dict[str, Any]:
        """EventSourceMappingConfiguration of an `sqs` event, as Lambda answers for an SQS queue. `state`: what a
        write answers (Creating, Updating, Deleting), instead of the state a read sees."""
        body: dict[str, Any] = {
            "UUID": uuid,
            "BatchSize": event.batch_size,
            # Whole seconds on Lambda; function.yaml may give a fraction, which waits at most this long.
            "MaximumBatchingWindowInSeconds": math.ceil(event.batch_window_s),
            "EventSourceArn": queue_arn,
        }
        if event.filter_criteria:
            body["FilterCriteria"] = {"Filters": [{"Pattern": json.dumps(pattern, separators=(",", ":"))}
                                                  for pattern in event.filter_criteria]}
        body.update({
            "FunctionArn": self.arn(version.function, None if event.qualifier == LATEST else event.qualifier),
            "LastModified": epoch(version.created),
            "LastProcessingResult": last_result,
            "State": state or ("Enabled" if endpoint_url else "Disabled"),
            "StateTransitionReason": "USER_INITIATED" if endpoint_url
            else "No SQS server: the server has no sqs.endpoint_url",
            "FunctionResponseTypes": ["ReportBatchItemFailures"] if event.report_batch_item_failures else [],
            "ScalingConfig": {"MaximumConcurrency": event.maximum_concurrency},
            "EventSourceMappingArn": f"arn:aws:lambda:{self.region}:{self.account}:event-source-mapping:{uuid}",
        })
        return body

    def url_config(self, name: str, *, url: str, auth_type: str, created: str, modified: str,
                   cors: CorsSpec | None) -> dict[str, Any]:
        body: dict[str, Any] = {"FunctionUrl": url, "FunctionArn": self.arn(name), "AuthType": auth_type,
                "CreationTime": aws_time(created), "LastModifiedTime": aws_time(modified), "InvokeMode": "BUFFERED"}
        if cors is not None:
            body["Cors"] = cors_shape(cors)
        return body


def cors_shape(cors: CorsSpec) -> dict[str, Any]:
    """Lambda's Cors from an http event's `cors`."""
    return {"AllowCredentials": cors.allow_credentials, "AllowHeaders": list(cors.allow_headers),
            "AllowMethods": list(cors.allow_methods), "AllowOrigins": list(cors.allow_origins),
            "ExposeHeaders": list(cors.expose_headers), "MaxAge": cors.max_age_s}


async def for_request(request: Request, shown: Iterable[Version]) -> Shapes:
    """The shape builder of one request: the caller's right to see secrets (the guard's `may_admin`), and the
    sizes of the code shown."""
    svc = services(request)
    return Shapes(region=svc.config.region, account=svc.config.account_id,
                  may_admin=bool(request.scope.get("state", {}).get("may_admin")),
                  code_sizes=await svc.catalog.code_sizes(version.code_hash for version in shown))


def code_sha256(version: Version) -> str:
    """CodeSha256 as Lambda gives it: the base64 of the zip's sha256 (Lambent's code hash is its hex)."""
    return base64.b64encode(bytes.fromhex(version.code_hash)).decode()


def revision_id(item: Published) -> str:
    """A RevisionId that changes when the version behind a label does, and only then."""
    version = item.version
    return stable_id(f"{version.function}:{item.label}:{version.revision}:{version.code_hash}")
