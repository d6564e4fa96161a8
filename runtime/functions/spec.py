"""`function.yaml`: the per-function settings, validated; every key optional, unknown keys refused."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import keys
from .expressions import parse
from .filters import FilterError, compile_pattern, compile_policy

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")                       # Lambda's function name rule
QUALIFIER_RE = re.compile(r"^(\$LATEST|[0-9]{1,10}|[A-Za-z0-9_-]{1,128})$")
TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")                    # Kafka's topic name rule
CONSUMER_GROUP_RE = re.compile(r"^[ a-zA-Z0-9\-/*:_+=.@]*$")          # Lambda's ConsumerGroupId (its URI type)
ALIAS_RE = re.compile(r"^(?![0-9]+$)[A-Za-z0-9_-]{1,128}$")            # not all digits: that is a version
_HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\.[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# Lambda refuses these as user variables: the runtime sets them.
RESERVED_ENV = frozenset({
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "AWS_LAMBDA_LOG_FORMAT",
    "AWS_LAMBDA_LOG_LEVEL",
})


MAX_YAML_BYTES = 64 * 1024          # function.yaml
MAX_SCHEDULE_INPUT_BYTES = 256 * 1024   # a schedule's input, serialized: EventBridge's limit for an event


def name_problem(name: str) -> str | None:
    """Why `name` breaks the function name rule (NAME_RE), in the words every refusal uses; None when it keeps it."""
    if NAME_RE.match(name):
        return None
    return f"'{name}' is not a valid function name: use 1-64 letters, digits, '-' or '_'"


class SpecError(ValueError):
    """A `function.yaml` that cannot be used; the message names the file and the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Destination(_Model):
    """Where a record goes: a function (async invocation), a Kafka `topic`, or an SNS-style topic (`sns`)."""
    function: str | None = None
    topic: str | None = None
    sns: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,256}$")

    @model_validator(mode="after")
    def _exactly_one(self) -> Destination:
        if sum(value is not None for value in (self.function, self.topic, self.sns)) != 1:
            raise ValueError("give exactly one of 'function', 'topic' (Kafka) or 'sns' (a topic of the SNS API)")
        if self.function is not None:
            name, colon, qualifier = self.function.partition(":")
            if not NAME_RE.match(name) or (colon and not QUALIFIER_RE.match(qualifier)):
                raise ValueError(f"'{self.function}' is not a valid function name (name or name:qualifier)")
        if self.topic is not None and not TOPIC_RE.match(self.topic):
            raise ValueError(f"'{self.topic}' is not a valid topic name: use 1-249 letters, digits, '.', '_' or '-'")
        return self


class AsyncSpec(_Model):
    max_retry_attempts: int = Field(default=2, ge=0, le=2)
    retry_delays_s: tuple[float, ...] = Field(default=(60.0, 120.0), alias="retry_delays")
    max_event_age_s: int = Field(default=21600, ge=60, le=21600, alias="max_event_age")
    on_success: Destination | None = None
    on_failure: Destination | None = None

    @field_validator("retry_delays_s")
    @classmethod
    def _non_negative(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay < 0 for delay in value):
            raise ValueError("delays must be zero or more seconds")
        return value


class CorsSpec(_Model):
    """A function URL's CORS settings, as Lambda's Cors (AllowOrigins, AllowMethods, ...)."""
    allow_origins: tuple[Annotated[str, Field(min_length=1, max_length=253)], ...] = Field(default=(), max_length=100)
    allow_methods: tuple[Annotated[str, Field(max_length=6)], ...] = Field(default=(), max_length=6)
    allow_headers: tuple[Annotated[str, Field(max_length=1024)], ...] = Field(default=(), max_length=100)
    expose_headers: tuple[Annotated[str, Field(max_length=1024)], ...] = Field(default=(), max_length=100)
    allow_credentials: bool = False
    max_age_s: int = Field(default=0, ge=0, le=86400, alias="max_age")

    def headers(self, origin: str | None, *, preflight: bool) -> list[tuple[str, str]]:
        """The Access-Control-* headers of an answer to a request from `origin`, none when the origin is not
        allowed (as Lambda: the browser then refuses the answer). `preflight`: an OPTIONS request's answer."""
        if origin is None or not ("*" in self.allow_origins or origin in self.allow_origins):
            return []
        found = [("access-control-allow-origin", "*" if "*" in self.allow_origins and not self.allow_credentials
                  else origin)]
        if self.allow_credentials:
            found.append(("access-control-allow-credentials", "true"))
        if preflight:
            found += [(name, ", ".join(values)) for name, values in (
                ("access-control-allow-methods", self.allow_methods),
                ("access-control-allow-headers", self.allow_headers)) if values]
            if self.max_age_s:
                found.append(("access-control-max-age", str(self.max_age_s)))
        elif self.expose_headers:
            found.append(("access-control-expose-headers", ", ".join(self.expose_headers)))
        return found


class HttpEvent(_Model):
    cors: CorsSpec | None = None


class ScheduleEvent(_Model):
    expression: str
    input: Any = None
    timezone: str = "UTC"
    enabled: bool = True
    qualifier: str = Field(default="$LATEST", pattern=QUALIFIER_RE.pattern)   # fire a version or an alias

    @model_validator(mode="after")
    def _schedulable(self) -> ScheduleEvent:
        parse(self.expression, self.timezone)       # checked at deploy: a bad one never reaches a scheduler
        if self.input is not None and len(json.dumps(self.input)) > MAX_SCHEDULE_INPUT_BYTES:
            raise ValueError(f"input is larger than {MAX_SCHEDULE_INPUT_BYTES} bytes once serialized "
                             "(EventBridge's limit for an event)")
        return self


class KafkaEvent(_Model):
    topic: str = Field(pattern=TOPIC_RE.pattern)
    batch_size: int = Field(default=100, ge=1, le=10000)
    batch_window_s: float = Field(default=0.5, ge=0, le=300, alias="batch_window")
    starting_position: Literal["TRIM_HORIZON", "LATEST"] = "TRIM_HORIZON"
    max_retry_attempts: int = Field(default=-1, ge=-1, le=10000)
    max_record_age_s: int = Field(default=-1, ge=-1, le=604800, alias="max_record_age")
    bisect_on_error: bool = False
    report_batch_item_failures: bool = False
    on_failure: Destination | None = None
    qualifier: str = Field(default="$LATEST", pattern=QUALIFIER_RE.pattern)   # invoke a version or an alias
    # The Kafka consumer group; without it, one derived from the event's place (keys.stream_group).
    consumer_group: str | None = Field(default=None, min_length=1, max_length=200, pattern=CONSUMER_GROUP_RE.pattern)

    def group(self, function: str, index: int) -> str:
        """The consumer group of this mapping, `index` being its place in `events`: the one name every use of
        the group (the consumer, the console, the Lambda API's UUID) takes. An event removed before it would shift
        the derived name (and lose the committed offsets): whoever removes one pins the later ones first."""
        return self.consumer_group or keys.stream_group(function, index, self.topic)


QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")                 # SQS's queue name rule (.fifo aside)
TOPIC_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")    # SNS's topic name rule (FIFO topics are not served)


class SqsEvent(_Model):
    """A queue of an SQS-compatible server, polled as Lambda's SQS event source mapping."""
    queue: str = Field(min_length=1, max_length=2048)     # a queue name, or a queue URL
    batch_size: int = Field(default=10, ge=1, le=10000)
    batch_window_s: float = Field(default=0, ge=0, le=300, alias="maximum_batching_window")
    report_batch_item_failures: bool = False
    maximum_concurrency: int = Field(default=2, ge=2, le=1000)     # Lambda's ScalingConfig: batches at once
    filter_criteria: tuple[dict[str, Any], ...] = Field(default=(), max_length=5)   # Lambda allows 5 patterns
    qualifier: str = Field(default="$LATEST", pattern=QUALIFIER_RE.pattern)

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        if value.startswith(("http://", "https://")):
            return value
        name = value.removesuffix(".fifo")
        if not QUEUE_NAME_RE.match(name):
            raise ValueError(f"'{value}' is not a queue name (1-80 letters, digits, '-' or '_', '.fifo' at the end "
                             "for a FIFO queue) nor a queue URL (http:// or https://)")
        return value

    @model_validator(mode="after")
    def _sqs_rules(self) -> SqsEvent:
        if self.batch_size > 10 and self.batch_window_s < 1:
            raise ValueError("a batch_size above 10 needs a maximum_batching_window of at least 1 second "
                             "(as Lambda's SQS event source)")
        for index, pattern in enumerate(self.filter_criteria):      # checked at deploy, never at run time
            try:
                compile_pattern(pattern)
            except FilterError as exc:
                raise ValueError(f"filter_criteria[{index}]: {exc}") from None
        return self

    @property
    def queue_name(self) -> str:
        """The queue's name: the last part of a queue URL, or what was given."""
        return self.queue.rstrip("/").rsplit("/", 1)[-1]

    @property
    def fifo(self) -> bool:
        return self.queue_name.endswith(".fifo")


class SnsEvent(_Model):
    """A subscription of this function to a topic of the gateway's SNS API (created when first named)."""
    topic: str = Field(pattern=TOPIC_NAME_RE.pattern)
    filter_policy: dict[str, Any] | None = None
    filter_policy_scope: Literal["MessageAttributes", "MessageBody"] = "MessageAttributes"
    qualifier: str = Field(default="$LATEST", pattern=QUALIFIER_RE.pattern)

    @model_validator(mode="after")
    def _policy(self) -> SnsEvent:
        if self.filter_policy is not None:
            try:
                compile_policy(self.filter_policy, scope=self.filter_policy_scope)
            except FilterError as exc:
                raise ValueError(f"filter_policy: {exc}") from None
        return self


_KINDS = ("http", "schedule", "kafka", "sqs", "sns")


class Event(_Model):
    """One entry of `events`: a mapping with exactly one of http, schedule, kafka, sqs, sns."""
    http: HttpEvent | None = None
    schedule: ScheduleEvent | None = None
    kafka: KafkaEvent | None = None
    sqs: SqsEvent | None = None
    sns: SnsEvent | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_http(cls, data: Any) -> Any:
        # `- http:` with nothing after it is YAML for {"http": None}; it means a function URL with defaults.
        if isinstance(data, dict) and "http" in data and data["http"] is None:
            return {**data, "http": {}}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Event:
        given = [key for key in _KINDS if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("each event has exactly one of 'http', 'schedule', 'kafka', 'sqs' or 'sns'")
        return self

    @property
    def kind(self) -> str:
        return next(key for key in _KINDS if getattr(self, key) is not None)


class LoggingSpec(_Model):
    """Lambda's LoggingConfig: how the function's and the platform's log lines are written, and with JSON
    which levels are kept (`application_log_level` for the root logger, `system_log_level` for START/REPORT)."""
    format: Literal["Text", "JSON"] = Field(default="Text", alias="log_format")
    application_log_level: Literal["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"] | None = None
    system_log_level: Literal["DEBUG", "INFO", "WARN"] | None = None

    @model_validator(mode="after")
    def _levels_need_json(self) -> LoggingSpec:
        if self.format == "Text" and (self.application_log_level or self.system_log_level):
            raise ValueError("log levels need log_format: JSON (as Lambda's LoggingConfig)")
        return self

    @property
    def is_json(self) -> bool:
        return self.format == "JSON"

    @property
    def system_lines(self) -> bool:
        """Whether the platform's per-invocation lines (platform.start, platform.report: INFO) are written."""
        return not self.is_json or (self.system_log_level or "INFO") in ("DEBUG", "INFO")


class FunctionSpec(_Model):
    handler: str = "handler.handler"
    description: str = Field(default="", max_length=256)
    timeout_s: float = Field(default=3.0, gt=0, le=900, alias="timeout")
    memory_mb: int = Field(default=128, ge=32, le=10240)
    ephemeral_storage_mb: int = Field(default=512, ge=512, le=10240)      # the size of the private /tmp
    network: Literal["default", "none"] = "default"                        # none: a jail without network
    environment: dict[str, str] = Field(default_factory=dict)
    reserved_concurrency: int | None = Field(default=None, ge=0, le=10000)
    async_: AsyncSpec = Field(default_factory=AsyncSpec, alias="async")
    logging: LoggingSpec = Field(default_factory=LoggingSpec, alias="logging_config")
    events: tuple[Event, ...] = ()

    @field_validator("handler")
    @classmethod
    def _handler_shape(cls, value: str) -> str:
        if not _HANDLER_RE.match(value):
            raise ValueError(f"'{value}' is not module.attribute (for example handler.handler)")
        return value

    @field_validator("environment", mode="before")
    @classmethod
    def _environment(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        env = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _ENV_NAME_RE.match(key):
                raise ValueError(f"'{key}' is not a valid variable name (letters, digits and '_', a letter first)")
            if key in RESERVED_ENV:
                raise ValueError(f"'{key}' is reserved: the runtime sets it")
            if isinstance(item, (dict, list)) or item is None:
                raise ValueError(f"'{key}' must be a string, number or boolean")
            env[key] = ("true" if item else "false") if isinstance(item, bool) else str(item)
        return env

    @model_validator(mode="after")
    def _one_mapping_per_queue(self) -> FunctionSpec:
        queues = [event.sqs.queue_name for event in self.events if event.sqs is not None]
        if len(queues) != len(set(queues)):
            raise ValueError("events: a queue is polled by one `sqs` event of a function (as Lambda's "
                             "one event source mapping per function and queue)")
        return self

    @property
    def has_http(self) -> bool:
        return any(event.http is not None for event in self.events)

    @property
    def triggers(self) -> list[str]:
        return sorted({event.kind for event in self.events})

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def parse(cls, text: str | bytes | None, *, source: str = "function.yaml") -> FunctionSpec:
        """Parse YAML text (None or empty means every default), bounded: at most MAX_YAML_BYTES, and no
        aliases (`*name`), whose nesting makes a few hundred bytes expand to gigabytes."""
        if text and len(text) > MAX_YAML_BYTES:
            raise SpecError(f"{source}: larger than {MAX_YAML_BYTES} bytes ({len(text)})")
        try:
            if text and any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
                raise SpecError(f"{source}: YAML aliases (*name) are not allowed: write the value out")
            data = yaml.safe_load(text) if text else None
            environment = _environment_as_written(text) if isinstance(data, dict) and "environment" in data else None
        except yaml.YAMLError as exc:
            raise SpecError(f"{source}: not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a mapping of keys at the top level")
        if environment is not None:
            data["environment"] = environment
        return cls.from_json(data, source=source)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str = "function.yaml") -> FunctionSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError("; ".join(_describe(error, source) for error in exc.errors())) from None


def _environment_as_written(text: str | bytes | None) -> dict[Any, Any] | None:
    """`environment` with each scalar as the user typed it, or None when it is not a plain mapping.

    YAML 1.1 reads `PYTHON_VERSION: 3.10` as 3.1, `COUNTRY: NO` as False and `ZIP: 01234` as 668;
    a variable's value is text, so it keeps the text. Lists and mappings stay lists and mappings, null
    stays None, so that validation refuses them.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader) if text else None
    if not isinstance(root, yaml.MappingNode):
        return None
    found = [value for key, value in root.value if isinstance(key, yaml.ScalarNode) and key.value == "environment"]
    if len(found) != 1 or not isinstance(found[0], yaml.MappingNode):
        return None
    environment: dict[Any, Any] = {}
    for key, value in found[0].value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            return None          # `<<: *defaults` and other rarities: keep what safe_load built
        if isinstance(value, yaml.SequenceNode):
            environment[key.value] = []
        elif isinstance(value, yaml.MappingNode):
            environment[key.value] = {}
        elif value.tag == "tag:yaml.org,2002:null":
            environment[key.value] = None
        else:
            environment[key.value] = value.value
    return environment


def _describe(error: Any, source: str) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
    return f"{source}: {key}: {message}"
