"""Server-wide configuration: `config.yaml`, overridden by `LAMBENT_*` environment variables.

One `Config` is built once by `Config.load(path, environ)` and passed down; nothing in the
package reads `os.environ` at import time.

Environment overrides: `LAMBENT_<KEY>` for a top-level key (`LAMBENT_REDIS_URL`) and
`LAMBENT_<SECTION>__<KEY>` for a nested one (`LAMBENT_GATEWAY__PORT`). `LAMBENT_CONFIG` names the file.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_PREFIX = "LAMBENT_"
# Environment variables that configure the process rather than a key of config.yaml
# (LAMBENT_REDIS_PASSWORD, LAMBENT_KAFKA_PASSWORD: docker-compose.yml's Redis and Kafka passwords, exported in
# the shell that runs compose).
# LAMBENT_ variables that are not configuration: the CLI's, compose's passwords, and the scripts' (scripts/*.sh).
_NOT_KEYS = {"LAMBENT_CONFIG", "LAMBENT_URL", "LAMBENT_SECRET", "LAMBENT_REDIS_PASSWORD", "LAMBENT_KAFKA_PASSWORD",
             "LAMBENT_SQS_PASSWORD", "LAMBENT_SQS_GUARD_SECRET", "LAMBENT_SQS_UNGUARDED", "LAMBENT_BIN_DIR",
             "LAMBENT_BUILD_COMPOSE", "LAMBENT_CACHE", "LAMBENT_PYTHON", "LAMBENT_ROOT", "LAMBENT_KAFKA_VERSION",
             "LAMBENT_KAFKA_JVM_OPTS", "LAMBENT_ELASTICMQ_VERSION", "LAMBENT_ELASTICMQ_JVM_OPTS"}


# gateway.url_domain: dot-separated DNS labels, lower case (it is compared with the Host header without case).
_DOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


class ConfigError(Exception):
    """A configuration file or override that cannot be used; the message names the key and the source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    sync_payload_limit_bytes: int = Field(default=6 * 1024 * 1024, ge=1024)
    async_payload_limit_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Proxies (addresses or networks) whose X-Forwarded-For / X-Forwarded-Proto are believed; from anyone
    # else they are ignored, and the address used for anything is the connection's peer.
    trusted_proxies: tuple[str, ...] = ()
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)   # the request line and headers together (431)
    max_headers: int = Field(default=100, ge=8)                  # header fields in one request (431)
    # Function URLs answer at <name>.<url_domain> (AWS: <url-id>.lambda-url.<region>.on.aws); *.localhost is
    # loopback in browsers and curl. Behind a reverse proxy: a wildcard DNS name that reaches the gateway.
    url_domain: str = "lambda-url.localhost"

    @field_validator("url_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        """A DNS name; a function's name goes in front of it as one more label (64 + 1 + 188 = DNS's 253)."""
        domain = value.strip().lower()
        if len(domain) > 188 or not _DOMAIN_RE.fullmatch(domain):
            raise ValueError(f"'{value}' is not a domain name (letters, digits and '-' in dot-separated labels, "
                             "such as lambda-url.localhost or fn.example.com)")
        return domain

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Each as uvicorn reads it: an address, or a network written with its host bits zero."""
        normal = []
        for item in value:
            try:
                normal.append(str(ipaddress.ip_network(item, strict=False)) if "/" in item
                              else str(ipaddress.ip_address(item)))
            except ValueError:
                raise ValueError(f"'{item}' is not an IP address or network (10.0.0.5, 10.0.0.0/8, ::1)") from None
        return tuple(normal)


class SandboxConfig(_Section):
    idle_s: float = Field(default=300.0, gt=0)              # a warm sandbox unused this long is stopped
    max_per_node: int = Field(default=64, ge=1)             # sandbox processes on this node, all functions
    max_per_function: int = Field(default=32, ge=1)         # per function version on this node
    python: str | None = None                               # interpreter for sandboxes; default: the server's own
    acquire_timeout_s: float = Field(default=10.0, gt=0)    # longest wait for a free sandbox on a busy node
    separate_cpu: bool = False                      # the gateway alone on one CPU, every role's sandboxes on the others
    isolation: Literal["auto", "jail", "none"] = "auto"     # auto: jail when the host allows it, else warn
    prestarted: int = Field(default=2, ge=0, le=16)         # blank jails kept ready per shape (0: none)
    uid: int = Field(default=993, ge=1, le=2**31 - 2)       # the jailed sandbox's user (Lambda's sbx_user1051)
    gid: int = Field(default=990, ge=1, le=2**31 - 2)
    # While a role awaits one invocation's answer alone, it polls for it this long before it sleeps, and the
    # sandbox then polls as long for the next invocation (0: neither): a fast handler's call then costs no
    # wake-up (executor/process.py, _poll_reply; sandbox/bootstrap.py, _poll_input)
    poll_us: int = Field(default=300, ge=0, le=10_000)


class AsyncConfig(_Section):
    queue: str = Field(default="lambent-async", pattern=r"^[A-Za-z0-9_.-]+$")   # the RQ queue name
    lease_s: float = Field(default=10.0, ge=0.5)           # a running invocation whose lease lapses is re-run
    queued_check_s: float = Field(default=60.0, ge=1.0)    # how often a queued event's RQ job is checked
    result_ttl_s: int = Field(default=86400, ge=1)         # how long a finished invocation's status is kept
    throttle_delay_s: float = Field(default=1.0, gt=0)     # first delay of a throttled event, doubling to 60 s
    poll_s: float = Field(default=0.1, gt=0)               # how often due retries are moved onto the queue
    shutdown_grace_s: float = Field(default=30.0, gt=0)    # SIGTERM: the worker has stopped by then


class KafkaSaslConfig(_Section):
    """The login of every Kafka client Lambent makes (SASL_PLAINTEXT). The password comes from config.yaml or,
    better, the environment (LAMBENT_KAFKA_SASL__PASSWORD); a SecretStr, it is masked wherever it is shown."""
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username: str = Field(default="lambent", min_length=1)
    password: SecretStr

    @field_validator("password")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("the password is empty")
        return value


class StreamsConfig(_Section):
    retry_backoff_s: float = Field(default=0.5, gt=0)       # first wait before retrying a failed batch, doubling
    max_retry_backoff_s: float = Field(default=30.0, gt=0)
    poll_timeout_s: float = Field(default=0.1, gt=0)        # one poll of a consumer's loop
    commit_interval_s: float = Field(default=0.1, ge=0, le=60)   # finished batches' offsets committed this often
    buffer_bytes: int = Field(default=2 * 1024 * 1024, ge=0)     # per partition: fetched ahead, beyond two batches
    stall_s: float = Field(default=120.0, gt=0)             # a poll loop silent this long is restarted
    state_interval_s: float = Field(default=2.0, gt=0)      # how often partition state is written to Redis
    max_batch_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)   # under Lambda's 6 MB event limit
    shutdown_grace_s: float = Field(default=30.0, gt=0)     # SIGTERM: in-flight batches finish or are cut off by then


class SqsConfig(_Section):
    """The SQS-compatible server the `sqs` events poll (ElasticMQ behind scripts/elasticmq.sh's guard on-prem, AWS
    SQS elsewhere). Credentials: `access_key_id` and `secret_access_key` (better from the environment:
    LAMBENT_SQS__SECRET_ACCESS_KEY), else boto3's usual chain (AWS_ACCESS_KEY_ID, ~/.aws, an instance role)."""
    endpoint_url: str | None = None       # None: AWS SQS in `region`
    region: str | None = None             # default: the server's `region`
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    wait_time_s: int = Field(default=20, ge=1, le=20)               # long polling (ReceiveMessage WaitTimeSeconds)
    max_pollers: int = Field(default=10, ge=1, le=1000)   # per mapping per streams process (threads); the
    #                                                       mapping's maximum_concurrency bounds the cluster
    retry_backoff_s: float = Field(default=1.0, gt=0)               # first wait after an error of the queue server
    max_retry_backoff_s: float = Field(default=30.0, gt=0)


class SchedulerConfig(_Section):
    misfire_grace_s: float = Field(default=300.0, ge=0)    # a fire this late still happens (once); later: missed
    shutdown_grace_s: float = Field(default=30.0, gt=0)    # SIGTERM: the scheduler has stopped by then


class DeployConfig(_Section):
    zipped_limit_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)       # Lambda's direct upload limit
    unzipped_limit_bytes: int = Field(default=250 * 1024 * 1024, ge=1024)    # Lambda's unzipped limit
    install_timeout_s: float = Field(default=600.0, gt=0)                    # pip install of requirements.txt


class MetricsConfig(_Section):
    """Where worker, streams and scheduler serve /metrics (the gateway serves it on its own port). A port that is
    taken on this host (a second stack or replica) is not fatal: the role serves on a free port and logs which."""
    host: str = "127.0.0.1"                              # 0.0.0.0 in a container, published on the host's loopback
    worker_port: int = Field(default=9101, ge=0, le=65535)      # 0: no metrics port
    streams_port: int = Field(default=9102, ge=0, le=65535)
    scheduler_port: int = Field(default=9103, ge=0, le=65535)


class LogsConfig(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    keep_per_function: int = Field(default=1000, ge=1)      # captured invocation logs kept in Redis
    tail_bytes: int = Field(default=4096, ge=0)             # X-Amz-Log-Result size, as Lambda's 4 KB


class AuthKey(_Section):
    id: str
    secret_env: str
    role: Literal["admin", "invoke"]


class AuthConfig(_Section):
    require_invoke_key: bool = False
    keys: tuple[AuthKey, ...] = ()


class Config(_Section):
    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap_servers: str | None = None
    kafka_sasl: KafkaSaslConfig | None = None      # None: Kafka clients connect without credentials (PLAINTEXT)
    functions_dir: Path = Path("functions")
    data_dir: Path = Path(".state/data")
    region: str = "us-east-1"
    account_id: str = Field(default="000000000000", pattern=r"^\d{12}$")
    gateway: GatewayConfig = GatewayConfig()
    sandbox: SandboxConfig = SandboxConfig()
    logs: LogsConfig = LogsConfig()
    async_: AsyncConfig = Field(default=AsyncConfig(), alias="async")
    streams: StreamsConfig = StreamsConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    sqs: SqsConfig = SqsConfig()
    deploy: DeployConfig = DeployConfig()
    metrics: MetricsConfig = MetricsConfig()
    auth: AuthConfig = AuthConfig()

    @classmethod
    def load(cls, path: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
        """Read `path` (or `$LAMBENT_CONFIG`, or `./config.yaml` when it exists), then apply overrides."""
        environ = {} if environ is None else environ
        source = "defaults"
        data: dict[str, Any] = {}
        if path is None:
            path = environ.get("LAMBENT_CONFIG") or ("config.yaml" if Path("config.yaml").is_file() else None)
        if path is not None:
            source = str(path)
            try:
                loaded = yaml.safe_load(Path(path).read_text())
            except FileNotFoundError:
                raise ConfigError(f"{source}: file not found") from None
            except (OSError, UnicodeDecodeError) as exc:   # a folder, no permission, not text
                raise ConfigError(f"{source}: cannot read the file: {exc}") from None
            except yaml.YAMLError as exc:
                raise ConfigError(f"{source}: not valid YAML: {exc}") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{source}: expected a mapping of keys at the top level")
            data = loaded or {}
        overridden = _apply_env(data, environ)
        try:
            config = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, source, overridden)) from None
        if path is not None:
            # Relative folders are relative to the config file, as a user reading it would expect.
            base = Path(path).resolve().parent
            config = config.model_copy(update={
                "functions_dir": config.functions_dir if "functions_dir" in overridden
                else base / config.functions_dir,
                "data_dir": config.data_dir if "data_dir" in overridden else base / config.data_dir,
            })
        return config


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> set[str]:
    """Merge LAMBENT_* variables into `data`; returns the dotted keys they set."""
    overridden: set[str] = set()
    secrets = _secret_names(data)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NOT_KEYS or name in secrets \
                or name.startswith("LAMBENT_TEST_"):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        target = data
        for part in parts[:-1]:
            section = target.setdefault(part, {})
            if not isinstance(section, dict):
                raise ConfigError(f"environment {name}: '{part}' is not a section")
            target = section
        # Scalars stay strings and pydantic converts them by the key's type ("9000" -> 9000); YAML would
        # turn an account id "000000000000" into 0 and a region "no" into False. Lists and mappings
        # (LAMBENT_AUTH__KEYS='[{id: ops, ...}]') are written in YAML flow style.
        if value.lstrip().startswith(("[", "{")):
            try:
                target[parts[-1]] = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ConfigError(f"environment {name}: not valid YAML: {exc}") from None
        else:
            target[parts[-1]] = value
        overridden.add(".".join(parts))
    return overridden


def _secret_names(data: dict[str, Any]) -> set[str]:
    """The variables that `auth.keys[].secret_env` names: secrets (LAMBENT_OPS_SECRET), not config keys."""
    auth = data.get("auth")
    keys = auth.get("keys") if isinstance(auth, dict) else None
    if not isinstance(keys, list):
        return set()
    return {key["secret_env"] for key in keys if isinstance(key, dict) and isinstance(key.get("secret_env"), str)}


def _describe(exc: ValidationError, source: str, overridden: set[str]) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        key = ".".join(loc) or "(top level)"
        # The error may sit below the key a variable set (LAMBENT_AUTH__KEYS -> auth.keys.0.role).
        set_by = next((".".join(loc[:n]) for n in range(len(loc), 0, -1) if ".".join(loc[:n]) in overridden), None)
        origin = f"environment LAMBENT_{set_by.upper().replace('.', '__')}" if set_by else source
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {key}: {message}")
    return "; ".join(lines)
