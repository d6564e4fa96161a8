"""docker-compose.yml and the Dockerfile: parsed, and each service's command run here, outside containers.

No Docker engine runs on the test machines, so what the containers would run is run directly: the same
argv (with `lambent` as `python -m runtime`, and loopback addresses and free ports instead of the
container's), the same environment (service host names pointed at the test Redis and Kafka).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError

from . import kafka_client
from .helpers import ROOT, clean_env, free_port, start_role, stop_process, wait_until

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
ROLES = {"gateway": "serve", "worker": "worker", "streams": "streams", "scheduler": "scheduler"}
PASSWORD = "0123456789abcdef" * 3                 # as `openssl rand -hex 24` gives: 48 hex digits
KAFKA_PASSWORD = "fedcba9876543210" * 3
REQUIRED = re.compile(r"\$\{LAMBENT_REDIS_PASSWORD:\?[^}]+\}")
KAFKA_REQUIRED = re.compile(r"\$\{LAMBENT_KAFKA_PASSWORD:\?[^}]+\}")
SQS_PASSWORD = "0f1e2d3c4b5a6978" * 3
SQS_REQUIRED = re.compile(r"\$\{LAMBENT_SQS_PASSWORD:\?[^}]+\}")
ADMIN_SECRET = "a1b2c3d4e5f60718" * 3
ADMIN_REQUIRED = re.compile(r"\$\{LAMBENT_SECRET:\?[^}]+\}")
# What a user exports before `docker compose up` (README): compose refuses to start without any of them.
PASSWORDS = {"LAMBENT_REDIS_PASSWORD": PASSWORD, "LAMBENT_KAFKA_PASSWORD": KAFKA_PASSWORD,
             "LAMBENT_SQS_PASSWORD": SQS_PASSWORD, "LAMBENT_SECRET": ADMIN_SECRET}
METRICS_ROLES = {"worker": "worker_port", "streams": "streams_port", "scheduler": "scheduler_port"}


def interpolate(value: str, environ: dict[str, str]) -> str:
    """What compose makes of a value: ${NAME:?message} from `environ` (an error when unset or empty), $$ -> $."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        if not environ.get(name):
            raise ValueError(f"required variable {name} is missing a value: {match.group(2)}")
        return environ[name]

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*):\?([^}]*)\}", one, value)


def test_every_service_is_there_with_image_command_and_dependencies() -> None:
    assert set(SERVICES) == {"redis", "kafka", "elasticmq", "sqs-guard", "gateway", "worker", "streams", "scheduler"}
    assert SERVICES["redis"]["image"].startswith("redis:")
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["elasticmq"]["image"].startswith("softwaremill/elasticmq-native:")
    for name, role in ROLES.items():
        service = SERVICES[name]
        assert service["image"] == "lambent:local", name
        assert service["command"][:2] == ["lambent", role], name
        url = service["environment"]["LAMBENT_REDIS_URL"]
        assert re.fullmatch(r"redis://:" + REQUIRED.pattern + r"@redis:6379/0", url), url
        assert "code-cache:/var/lib/lambent" in service["volumes"]
    assert SERVICES["gateway"]["build"] == "."
    assert SERVICES["worker"]["deploy"]["replicas"] == 2
    assert SERVICES["streams"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ROLES:
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    for name in ("worker", "streams", "scheduler"):
        assert SERVICES[name]["depends_on"]["gateway"]["condition"] == "service_healthy"
    # every dependency waits for the other service's health check, which every service has
    for name, service in SERVICES.items():
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries"} <= service["healthcheck"].keys(), name
        for other, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"} and "healthcheck" in SERVICES[other], (name, other)


def test_redis_is_durable_and_never_evicts_and_the_gateway_is_published_on_loopback_only() -> None:
    command = SERVICES["redis"]["command"][2].split()                 # sh -c "exec ... redis-server - ..."
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-data:/data" in SERVICES["redis"]["volumes"]
    assert SERVICES["gateway"]["ports"] == ["127.0.0.1:8080:8080"]
    assert "./functions:/app/functions:ro" in SERVICES["gateway"]["volumes"]
    assert set(COMPOSE["volumes"]) == {"redis-data", "kafka-data", "elasticmq-data", "code-cache"}
    assert SERVICES["sqs-guard"]["healthcheck"]["test"][0] == "CMD"          # GET /healthz, `ok` only
    assert SERVICES["gateway"]["healthcheck"]["test"][0] == "CMD"
    assert SERVICES["redis"]["healthcheck"]["test"][0] == "CMD-SHELL"     # a pipe: redis-cli ping | grep PONG
    assert SERVICES["kafka"]["healthcheck"]["test"][0] == "CMD-SHELL"     # writes its client login file first


def test_every_volume_is_mounted_where_its_service_keeps_its_data() -> None:
    mounts = {(name, *volume.split(":")[:2]) for name, service in SERVICES.items()
              for volume in service.get("volumes", []) if not volume.startswith(".")}
    assert {volume for _, volume, _ in mounts} == set(COMPOSE["volumes"])     # each declared one used, only those
    target = {volume: path for _, volume, path in mounts}
    redis_command = SERVICES["redis"]["command"][2].split()
    assert redis_command[redis_command.index("--dir") + 1] == target["redis-data"]    # the append-only file, snapshots
    assert SERVICES["kafka"]["environment"]["KAFKA_LOG_DIRS"] == target["kafka-data"]  # topics, committed offsets
    storage = dict(part.removeprefix("-D").split("=", 1) for part in SERVICES["elasticmq"]["command"])
    assert storage["messages-storage.uri"].startswith(f"jdbc:h2:{target['elasticmq-data']}/")   # queues, messages
    # every role's data_dir (deployed code, installed requirements) is the image's LAMBENT_DATA_DIR, on code-cache
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"LAMBENT_DATA_DIR={target['code-cache']} " in dockerfile
    for name in ROLES:
        assert ("code-cache:" + target["code-cache"]) in SERVICES[name]["volumes"], name


def test_the_admin_key_comes_from_lambent_secret_into_every_role() -> None:
    """From the host, requests reach the gateway from Docker's bridge address and the generated key is inside the
    container: the admin key is LAMBENT_SECRET, exported in the shell that runs compose, whose lambent CLI sends it."""
    from runtime.config import Config
    from runtime.auth import Authenticator

    for name in ROLES:
        service_env = SERVICES[name]["environment"]
        assert ADMIN_REQUIRED.fullmatch(service_env["LAMBENT_SECRET"]), name
        assert "$(openssl rand -hex 24)" in service_env["LAMBENT_SECRET"]          # the message says how to set it
        with pytest.raises(ValueError, match="LAMBENT_SECRET"):                  # compose refuses to start without it
            interpolate(service_env["LAMBENT_SECRET"], {})
        env = {key: interpolate(str(value), PASSWORDS) for key, value in service_env.items()}
        config = Config.load(environ=env)
        assert [(key.id, key.role, key.secret_env) for key in config.auth.keys] == [
            ("admin", "admin", "LAMBENT_SECRET")]
        # the key holds from any address (the bridge's included), and nothing else is admin
        authenticator = Authenticator(config, env)
        bearer = {"authorization": f"Bearer {ADMIN_SECRET}"}
        principal = authenticator.authorize(need="admin", method="POST", path="/functions", query="", headers=bearer,
                                            body=b"", client_host="172.18.0.1")
        assert (principal.key_id, principal.role) == ("admin", "admin"), name
        assert ADMIN_SECRET not in repr(config)
    for name in set(SERVICES) - set(ROLES):
        assert not any("LAMBENT_SECRET" in str(value) for value in SERVICES[name].get("environment", {}).values()), name


def test_metrics_are_served_on_the_containers_addresses_and_published_on_the_hosts_loopback_only() -> None:
    from runtime.config import Config

    for name, setting in METRICS_ROLES.items():
        service = SERVICES[name]
        metrics = Config.load(environ={key: interpolate(str(value), PASSWORDS)
                                       for key, value in service["environment"].items()}).metrics
        port = getattr(metrics, setting)
        assert metrics.host == "0.0.0.0" and port > 0, name
        [published] = service["ports"]
        host_ip, host_port, container_port = published.split(":")
        assert (host_ip, int(container_port)) == ("127.0.0.1", port), name
        # worker replicas: a host port each, which Docker picks; the others: the same port on the host
        assert host_port == ("" if service.get("deploy", {}).get("replicas", 1) > 1 else str(port)), name
        assert f"http://127.0.0.1:{port}/metrics" in service["healthcheck"]["test"][-1], name
    for name, service in SERVICES.items():
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", [])), name


def test_every_health_check_parses_and_names_a_tool_of_its_image() -> None:
    """As far as can be seen outside the containers; each one is run for real in the tests below (Kafka's with a
    stand-in for the image's script, ElasticMQ's with one for busybox's wget where the host has none)."""
    tools = {"redis": "redis-cli", "kafka": "/opt/kafka/bin/kafka-broker-api-versions.sh", "elasticmq": "wget"}
    for name, service in SERVICES.items():
        kind, *command = service["healthcheck"]["test"]
        if kind == "CMD-SHELL":
            [script] = command
            syntax = subprocess.run(["sh", "-n", "-c", interpolate(script, PASSWORDS)], capture_output=True, text=True)
            assert syntax.returncode == 0, (name, syntax.stderr)
            assert tools[name] in script, name
        else:                                           # our image: python:3.x-slim with the package installed
            assert service["image"] == "lambent:local" and command[:2] == ["python", "-c"], name
            compile(command[2], f"{name}'s health check", "exec")


def test_redis_requires_the_password_from_lambent_redis_password_and_every_role_carries_it() -> None:
    redis_env = SERVICES["redis"]["environment"]
    assert REQUIRED.fullmatch(redis_env["LAMBENT_REDIS_PASSWORD"])
    assert REQUIRED.fullmatch(redis_env["REDISCLI_AUTH"])              # the health check's redis-cli uses it
    assert "$(openssl rand -hex 24)" in redis_env["LAMBENT_REDIS_PASSWORD"]   # the message says how to set it
    with pytest.raises(ValueError, match="LAMBENT_REDIS_PASSWORD"):      # compose refuses to start without it
        interpolate(redis_env["LAMBENT_REDIS_PASSWORD"], {})
    script = " ".join(SERVICES["redis"]["command"])
    assert PASSWORD not in script and "--requirepass" not in script   # not on redis-server's command line
    assert "requirepass $$LAMBENT_REDIS_PASSWORD" in script
    health = SERVICES["redis"]["healthcheck"]["test"]
    assert health[0] == "CMD-SHELL" and "redis-cli ping" in health[1] and "PONG" in health[1]
    assert "-a " not in health[1] and "-u " not in health[1]
    for name in ROLES:
        url = interpolate(SERVICES[name]["environment"]["LAMBENT_REDIS_URL"], {"LAMBENT_REDIS_PASSWORD": PASSWORD})
        assert url == f"redis://:{PASSWORD}@redis:6379/0"
        kwargs = redis.connection.parse_url(url)
        assert (kwargs["host"], kwargs["port"], kwargs["password"], kwargs["db"]) == ("redis", 6379, PASSWORD, 0)


def test_kafka_requires_a_sasl_login_with_lambent_kafka_password_on_every_listener_and_only_streams_has_it() -> None:
    from runtime.config import Config

    env = SERVICES["kafka"]["environment"]
    # every listener, the controller's included, is SASL_PLAINTEXT with PLAIN, and no PLAINTEXT one is left
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = [item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")]
    assert set(protocols) == set(listeners) == {"CLIENT", "CONTROLLER"}
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "CLIENT"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    assert (env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == env["KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL"]
            == "PLAIN")
    assert "PLAINTEXT://" not in env["KAFKA_ADVERTISED_LISTENERS"] and "SASL_" not in env["KAFKA_ADVERTISED_LISTENERS"]
    # (a listener named SASL_* would make the image demand a JAAS file in KAFKA_OPTS; the config is inline instead)
    for listener in ("CLIENT", "CONTROLLER"):
        jaas = interpolate(env[f"KAFKA_LISTENER_NAME_{listener}_PLAIN_SASL_JAAS_CONFIG"], PASSWORDS)
        assert jaas == ("org.apache.kafka.common.security.plain.PlainLoginModule required username=\"lambent\" "
                        f'password="{KAFKA_PASSWORD}" user_lambent="{KAFKA_PASSWORD}";'), listener
        with pytest.raises(ValueError, match="LAMBENT_KAFKA_PASSWORD"):      # compose refuses to start without it
            interpolate(env[f"KAFKA_LISTENER_NAME_{listener}_PLAIN_SASL_JAAS_CONFIG"],
                        {"LAMBENT_REDIS_PASSWORD": PASSWORD})
    assert KAFKA_REQUIRED.fullmatch(env["LAMBENT_KAFKA_PASSWORD"])
    assert "$(openssl rand -hex 24)" in env["LAMBENT_KAFKA_PASSWORD"]        # the message says how to set it
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert "kafka-data:/var/lib/kafka/data" in SERVICES["kafka"]["volumes"]
    # the health check logs in, with the password in a file rather than on the tool's command line
    health = SERVICES["kafka"]["healthcheck"]["test"]
    assert health[0] == "CMD-SHELL" and "--command-config" in health[1] and "$$LAMBENT_KAFKA_PASSWORD" in health[1]
    assert "umask 077" in health[1] and "kafka-broker-api-versions.sh --bootstrap-server localhost:9092" in health[1]
    # the streams role logs in with it; the roles that make no Kafka client do not get it
    streams = {key: interpolate(str(value), PASSWORDS) for key, value in SERVICES["streams"]["environment"].items()}
    config = Config.load(environ=streams)
    assert config.kafka_sasl is not None and config.kafka_bootstrap_servers == "kafka:9092"
    assert (config.kafka_sasl.mechanism, config.kafka_sasl.username) == ("PLAIN", "lambent")
    assert config.kafka_sasl.password.get_secret_value() == KAFKA_PASSWORD
    assert KAFKA_PASSWORD not in repr(config)
    for name in ("gateway", "worker", "scheduler"):
        assert not any("KAFKA_PASSWORD" in str(value) or "SASL" in key
                       for key, value in SERVICES[name]["environment"].items()), name


def _compose() -> tuple[list[str], bool] | None:
    """The compose command here, and whether it is v2 (it reads the compose spec) or Debian's docker-compose 1.29;
    None when there is none. scripts/lib.sh's ensure_docker_compose provides one (`make test` calls it)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        return [docker, "compose"], True
    standalone = shutil.which("docker-compose")
    if standalone:
        version = subprocess.run([standalone, "version", "--short"], capture_output=True, text=True, timeout=60)
        if version.returncode == 0 and not version.stdout.strip().startswith("1."):
            return [standalone], True
    cache = Path(os.environ.get("LAMBENT_CACHE", Path.home() / ".cache" / "lambent"))
    built = sorted(cache.glob("compose-v*/docker-compose"))
    if built:
        return [str(built[-1])], True
    return ([standalone], False) if standalone else None


def test_docker_compose_reads_the_file_with_the_variables_of_the_readme(tmp_path: Path) -> None:
    """`docker compose config`: the file as compose itself reads it (its schema, anchors and merges, interpolation),
    no engine needed. Compose 1.29 (Debian's) predates the compose spec's `cgroup`: that line is left out for it."""
    found = _compose()
    if found is None:
        message = ("no docker compose here: run `source scripts/lib.sh && ensure_docker_compose` (builds Docker's "
                   "compose v2 with Go, or installs Debian's docker-compose as root), or install the compose plugin")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    compose, spec = found
    text = (ROOT / "docker-compose.yml").read_text()
    if not spec:
        assert len(re.findall(r"(?m)^\s+cgroup: private\b.*\n", text)) == 1
        text = re.sub(r"(?m)^\s+cgroup: private\b.*\n", "", text)
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}

    def config(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, "--project-directory", str(ROOT), "-f", str(path), "config"],
                              env={**base, **environ}, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    done = config(PASSWORDS)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    assert set(resolved) == set(SERVICES)
    for name in SERVICES:
        assert resolved[name]["healthcheck"]["test"] == SERVICES[name]["healthcheck"]["test"], name
    for name in ROLES:                         # compose's merge of the anchors gives each role the keys
        environment = resolved[name]["environment"]
        assert (environment["LAMBENT_SECRET"], environment["LAMBENT_METRICS__HOST"]) == (ADMIN_SECRET, "0.0.0.0"), name
        assert environment["LAMBENT_REDIS_URL"] == f"redis://:{PASSWORD}@redis:6379/0", name
        if spec and name != "scheduler":
            assert resolved[name]["cgroup"] == "private", name
    for name in PASSWORDS:                     # without any one of the variables it refuses, and names it
        refused = config({key: value for key, value in PASSWORDS.items() if key != name})
        assert refused.returncode != 0 and name in refused.stderr, (name, refused.stderr)


def _kafka_libs() -> Path:
    """The Kafka jars scripts/kafka.sh resolved for the test broker (scripts/test.sh started it)."""
    cache = Path(os.environ.get("LAMBENT_CACHE", Path.home() / ".cache" / "lambent"))
    found = sorted(cache.glob("kafka-4.*/libs.stamp"))
    if not found:
        pytest.fail(f"no Kafka jars under {cache}: run the tests with `make test`, which resolves them")
    return found[-1].parent / "libs"


def test_the_kafka_service_runs_with_the_sasl_settings_it_asks_for(tmp_path: Path) -> None:
    """The service's KAFKA_* variables, made into server.properties and formatted by the image's own
    KafkaDockerWrapper, and the broker run from them, on free loopback ports instead of kafka:9092/9093; then the
    health check, with a stand-in for the image's kafka-broker-api-versions.sh; then a new container on the same
    kafka-data volume (a fresh setup, the same data dir) still has the topic, its record and a committed offset."""
    from runtime.config import Config
    from runtime.preflight import KafkaUnfit, check_kafka

    libs = _kafka_libs()
    java = [shutil.which("java") or "java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData", "-cp", f"{libs}/*"]
    port, cport = free_port(), free_port()
    places = {"kafka:9092": f"127.0.0.1:{port}", "kafka:9093": f"127.0.0.1:{cport}", "://:9092": f"://127.0.0.1:{port}",
              "://:9093": f"://127.0.0.1:{cport}", "/var/lib/kafka/data": str(tmp_path / "data")}

    def here(value: str) -> str:
        for theirs, ours in places.items():
            value = value.replace(theirs, ours)
        return value

    service_env = {key: here(interpolate(str(value), PASSWORDS))
                   for key, value in SERVICES["kafka"]["environment"].items()}
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **service_env,
           "CLUSTER_ID": "5L6g3nShT-eMCtK--X86sw"}            # the image's default (compose sets none)

    def container(number: int) -> subprocess.Popen[bytes]:
        """What a container's start does (the image's launch script): KafkaDockerWrapper's setup into config folders
        of its own, which formats the data dir, and "already formatted" is no error; then the broker."""
        folders = {name: tmp_path / f"{name}-{number}" for name in ("defaults", "mounted", "config")}
        for folder in folders.values():
            folder.mkdir()
        setup = subprocess.run([*java, "kafka.docker.KafkaDockerWrapper", "setup", "--default-configs-dir",
                                str(folders["defaults"]), "--mounted-configs-dir", str(folders["mounted"]),
                                "--final-configs-dir", str(folders["config"])], env=env, capture_output=True,
                               text=True, timeout=120)
        assert setup.returncode == 0 or (number > 1 and "already formatted" in setup.stderr), \
            setup.stdout + setup.stderr
        properties = (folders["config"] / "server.properties").read_text()
        assert f"log.dirs={tmp_path / 'data'}" in properties.splitlines()         # KAFKA_LOG_DIRS: the volume
        with open(tmp_path / "kafka.log", "ab") as log:
            return subprocess.Popen([*java, "kafka.Kafka", str(folders["config"] / "server.properties")], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)

    login = {"bootstrap_servers": f"127.0.0.1:{port}", "security_protocol": "SASL_PLAINTEXT",
             "sasl_mechanism": "PLAIN", "sasl_plain_username": "lambent", "sasl_plain_password": KAFKA_PASSWORD}
    broker = container(1)
    try:
        def listening() -> bool:
            assert broker.poll() is None, (tmp_path / "kafka.log").read_text(errors="replace")[-3000:]
            try:
                return kafka_client.call(f"127.0.0.1:{port}", kafka_client.API_VERSIONS, 0)[:2] == b"\0\0"
            except OSError:
                return False

        wait_until(listening, timeout=90, interval=0.5, message="the compose Kafka to listen")
        # the login works, and through it the controller (a topic is made there)
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", bootstrap_timeout_ms=60_000,
                                 security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                                 sasl_plain_username="lambent", sasl_plain_password=KAFKA_PASSWORD)
        admin.create_topics([NewTopic("compose-check", 1, 1)])
        assert "compose-check" in admin.list_topics()
        admin.close()
        check_kafka(Config.model_validate({"kafka_bootstrap_servers": f"127.0.0.1:{port}",
                                           "kafka_sasl": {"password": KAFKA_PASSWORD}}))
        # a client without the password, or with another, is refused on the client and the controller listener
        for refused in ({"kafka_bootstrap_servers": f"127.0.0.1:{port}"},
                        {"kafka_bootstrap_servers": f"127.0.0.1:{port}", "kafka_sasl": {"password": PASSWORD}}):
            with pytest.raises(KafkaUnfit):
                check_kafka(Config.model_validate(refused))
        for address in (f"127.0.0.1:{port}", f"127.0.0.1:{cport}"):
            assert kafka_client.call(address, kafka_client.METADATA, 12, kafka_client.METADATA_V12_ALL_TOPICS,
                                     flexible=True) == b"", address
        assert KAFKA_PASSWORD.encode() not in Path(f"/proc/{broker.pid}/cmdline").read_bytes()
        # the health check, as the container runs it (CMD-SHELL: sh -c, with the service's environment)
        tool = tmp_path / "bin" / "kafka-broker-api-versions.sh"
        tool.parent.mkdir()
        tool.write_text(f'#!/bin/sh\nexec {shlex.join(java)} org.apache.kafka.tools.BrokerApiVersionsCommand "$@"\n')
        tool.chmod(0o755)
        check = interpolate(SERVICES["kafka"]["healthcheck"]["test"][1], PASSWORDS).replace("/tmp/", f"{tmp_path}/")
        check = check.replace("/opt/kafka/bin/kafka-broker-api-versions.sh", str(tool))
        check = check.replace("localhost:9092", f"127.0.0.1:{port}")
        assert subprocess.run(["sh", "-c", check], env=env, capture_output=True, timeout=60).returncode == 0
        assert (tmp_path / "health.properties").stat().st_mode & 0o077 == 0      # umask 077: only its owner
        # ...and it fails when the password does not match
        assert subprocess.run(["sh", "-c", check], env={**env, "LAMBENT_KAFKA_PASSWORD": "wrong"},
                              capture_output=True, timeout=60).returncode != 0

        # A record, read by a consumer group that commits its offset; then the container is replaced.
        producer = KafkaProducer(**login)
        try:
            producer.send("compose-check", b"kept").get(timeout=60)
        finally:
            producer.close()
        consumer = KafkaConsumer("compose-check", group_id="compose-check", auto_offset_reset="earliest",
                                 enable_auto_commit=False, **login)
        try:
            records = wait_until(lambda: [r.value for batch in consumer.poll(timeout_ms=500).values() for r in batch],
                                 timeout=60, message="the record to be read")
            assert records == [b"kept"]
            consumer.commit()
        finally:
            consumer.close()
        stop_process(broker, timeout_s=30)
        assert (tmp_path / "data" / "compose-check-0").is_dir()              # the topic's partition, on the volume
        broker = container(2)
        wait_until(listening, timeout=90, interval=0.5, message="the compose Kafka to listen again")
        admin = KafkaAdminClient(bootstrap_timeout_ms=60_000, **login)
        try:
            assert "compose-check" in admin.list_topics()

            def committed() -> int | None:
                try:                            # the group's coordinator may still be loading the offsets topic
                    offsets = admin.list_group_offsets("compose-check")["compose-check"]
                except KafkaError:
                    return None
                return next((meta.offset for part, meta in offsets.items() if part.topic == "compose-check"), None)

            assert wait_until(committed, timeout=60, interval=0.5, message="the committed offset") == 1
        finally:
            admin.close()
        consumer = KafkaConsumer("compose-check", auto_offset_reset="earliest", consumer_timeout_ms=30_000, **login)
        try:
            assert next(iter(consumer)).value == b"kept"
        finally:
            consumer.close()
    finally:
        stop_process(broker, timeout_s=30)


def test_every_role_polls_elasticmq_through_the_guard_with_the_key_from_lambent_sqs_password() -> None:
    from runtime.config import Config

    for name in ROLES:
        service = SERVICES[name]
        assert SQS_REQUIRED.fullmatch(service["environment"]["LAMBENT_SQS__SECRET_ACCESS_KEY"]), name
        env = {key: interpolate(str(value), PASSWORDS) for key, value in service["environment"].items()}
        assert env["LAMBENT_SQS__ENDPOINT_URL"] == "http://sqs-guard:9324", name
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & env.keys(), name     # no dummy keys left
        sqs = Config.load(environ=env).sqs
        assert (sqs.endpoint_url, sqs.access_key_id) == ("http://sqs-guard:9324", "lambent"), name
        assert sqs.secret_access_key is not None and sqs.secret_access_key.get_secret_value() == SQS_PASSWORD, name
        assert service["depends_on"]["sqs-guard"]["condition"] == "service_healthy", name
        assert "elasticmq" not in service["depends_on"], name
        assert "networks" not in service, name                        # the default network alone
    guard = SERVICES["sqs-guard"]
    assert SQS_REQUIRED.fullmatch(guard["environment"]["LAMBENT_SQS_GUARD_SECRET"])
    assert "$(openssl rand -hex 24)" in guard["environment"]["LAMBENT_SQS_GUARD_SECRET"]
    with pytest.raises(ValueError, match="LAMBENT_SQS_PASSWORD"):        # compose refuses to start without it
        interpolate(guard["environment"]["LAMBENT_SQS_GUARD_SECRET"], {})
    assert guard["image"] == "lambent:local" and guard["entrypoint"] == ["python", "-m", "runtime.sqsguard"]
    assert guard["command"] == ["--listen", "0.0.0.0:9324", "--upstream", "http://elasticmq:9324"]
    assert guard["depends_on"]["elasticmq"]["condition"] == "service_healthy"
    assert "ports" not in guard                                   # reached on the compose network only
    # ElasticMQ checks no credentials: it is on an internal network that only the guard shares
    assert COMPOSE["networks"]["sqs-internal"]["internal"] is True
    assert SERVICES["elasticmq"]["networks"] == ["sqs-internal"]
    assert sorted(guard["networks"]) == ["default", "sqs-internal"]
    assert [name for name, service in SERVICES.items() if "sqs-internal" in service.get("networks", [])] \
        == ["elasticmq", "sqs-guard"]
    emq = SERVICES["elasticmq"]
    settings = dict(part.removeprefix("-D").split("=", 1) for part in emq["command"])
    assert settings["node-address.host"] == "sqs-guard"            # queue URLs the roles can reach: the guard's
    assert (settings["aws.region"], settings["aws.accountId"]) == ("us-east-1", "000000000000")
    assert settings["messages-storage.enabled"] == "true"
    assert settings["messages-storage.uri"].startswith("jdbc:h2:/data/") and "elasticmq-data:/data" in emq["volumes"]
    assert "ports" not in emq                                     # reached on the compose network only
    health = emq["healthcheck"]["test"]
    assert health[0] == "CMD-SHELL" and "Action=ListQueues" in health[1] and "ListQueuesResponse" in health[1]


def _elasticmq_libs() -> Path:
    """The ElasticMQ jars scripts/elasticmq.sh resolved for the test server (scripts/test.sh started it)."""
    cache = Path(os.environ.get("LAMBENT_CACHE", Path.home() / ".cache" / "lambent"))
    found = sorted(cache.glob("elasticmq-*/libs.stamp"))
    if not found:
        pytest.fail(f"no ElasticMQ jars under {cache}: run the tests with `make test`, which resolves them")
    return found[-1].parent / "libs"


def test_the_elasticmq_service_runs_with_the_settings_it_asks_for(tmp_path: Path) -> None:
    """The service's -D settings given to the same ElasticMQ server on the JVM (the image runs its GraalVM native
    build of it, with the same settings), on a free loopback port instead of 9324 and with /data in tmp_path; its
    health check, as the container runs it; and queues and messages kept across a restart, as on the volume."""
    from . import sqs_client

    port = free_port()
    secret = SQS_PASSWORD
    settings = [part.replace("/data/", f"{tmp_path}/") for part in SERVICES["elasticmq"]["command"]]
    java = [shutil.which("java") or "java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData", *settings, f"-Drest-sqs.bind-port={port}", "-Drest-sqs.bind-hostname=127.0.0.1",
            "-cp", f"{_elasticmq_libs()}/*", "org.elasticmq.server.Main"]
    check = SERVICES["elasticmq"]["healthcheck"]["test"][1].replace("127.0.0.1:9324", f"127.0.0.1:{port}")
    env = {**os.environ}
    if not shutil.which("wget"):                       # busybox's is in the image; a stand-in here if none
        shim = tmp_path / "bin" / "wget"
        shim.parent.mkdir()
        shim.write_text(f"#!{sys.executable}\nimport sys, urllib.request\n"
                        "sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[-1], timeout=2).read())\n")
        shim.chmod(0o755)
        env["PATH"] = f"{shim.parent}{os.pathsep}{env['PATH']}"
    endpoint = f"http://127.0.0.1:{port}"

    def run() -> subprocess.Popen[bytes]:
        log = open(tmp_path / "elasticmq.log", "ab")
        try:
            return subprocess.Popen(java, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        finally:
            log.close()

    def healthy(server: subprocess.Popen[bytes]) -> bool:
        assert server.poll() is None, (tmp_path / "elasticmq.log").read_text(errors="replace")[-3000:]
        return subprocess.run(["sh", "-c", check], env=env, capture_output=True, timeout=10).returncode == 0

    server = run()
    try:
        assert not healthy(server)                     # nothing answers yet: the check fails
        wait_until(lambda: healthy(server), timeout=60, interval=0.25, message="the compose ElasticMQ's health check")
        client = sqs_client.sqs(endpoint, secret_access_key=secret)       # ElasticMQ itself takes any signature
        url = client.create_queue(QueueName="compose-check")["QueueUrl"]
        assert url == "http://sqs-guard:9324/000000000000/compose-check"      # node-address: the guard's name
        url = f"{endpoint}/000000000000/compose-check"
        assert sqs_client.queue_arn(client, url) == "arn:aws:sqs:us-east-1:000000000000:compose-check"
        client.send_message(QueueUrl=url, MessageBody="kept")
        _check_the_sqs_guard_service(tmp_path, port, url)
        stop_process(server, timeout_s=20)
        server = run()                                 # the container restarted, its volume kept
        wait_until(lambda: healthy(server), timeout=60, interval=0.25, message="the restarted compose ElasticMQ")
        assert [m["Body"] for m in sqs_client.drain(client, url, count=1, timeout=10)] == ["kept"]
    finally:
        stop_process(server, timeout_s=20)


def _check_the_sqs_guard_service(tmp_path: Path, elasticmq_port: int, queue_url: str) -> None:
    """The sqs-guard service's entrypoint, command and environment in front of that ElasticMQ (elasticmq:9324 is
    127.0.0.1:ELASTICMQ_PORT here, and the guard listens on a free loopback port instead of 0.0.0.0:9324): its health
    check passes, a client signed as `lambent` with LAMBENT_SQS_PASSWORD gets through, others are refused."""
    from botocore.exceptions import ClientError

    from . import sqs_client

    service = SERVICES["sqs-guard"]
    port = free_port()
    here = {"0.0.0.0:9324": f"127.0.0.1:{port}", "http://elasticmq:9324": f"http://127.0.0.1:{elasticmq_port}"}
    argv = [sys.executable if part == "python" else part for part in service["entrypoint"]]
    argv += [here.get(part, part) for part in service["command"]]
    env = clean_env({key: interpolate(str(value), PASSWORDS) for key, value in service["environment"].items()})
    health = [sys.executable if part == "python" else part.replace("127.0.0.1:9324", f"127.0.0.1:{port}")
              for part in service["healthcheck"]["test"][1:]]
    assert service["healthcheck"]["test"][0] == "CMD"
    with open(tmp_path / "sqs-guard.log", "ab") as log:
        guard = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        def healthy() -> bool:
            assert guard.poll() is None, (tmp_path / "sqs-guard.log").read_text(errors="replace")[-3000:]
            return subprocess.run(health, capture_output=True, timeout=10).returncode == 0

        wait_until(healthy, timeout=30, interval=0.2, message="the sqs-guard service's health check")
        endpoint = f"http://127.0.0.1:{port}"
        local_url = queue_url.replace(f"http://127.0.0.1:{elasticmq_port}", endpoint)
        signed = sqs_client.sqs(endpoint, secret_access_key=SQS_PASSWORD)
        assert signed.get_queue_url(QueueName="compose-check")["QueueUrl"] == \
            "http://sqs-guard:9324/000000000000/compose-check"
        assert int(signed.get_queue_attributes(QueueUrl=local_url, AttributeNames=["ApproximateNumberOfMessages"])
                   ["Attributes"]["ApproximateNumberOfMessages"]) == 1
        with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
            sqs_client.sqs(endpoint, secret_access_key=PASSWORD).receive_message(QueueUrl=local_url)
        refused = httpx.post(endpoint, data={"Action": "PurgeQueue", "QueueUrl": local_url}, timeout=10)
        assert refused.status_code == 403 and "MissingAuthenticationToken" in refused.text
        assert SQS_PASSWORD.encode() not in Path(f"/proc/{guard.pid}/cmdline").read_bytes()
    finally:
        stop_process(guard, timeout_s=20)


def test_docker_waits_for_each_role_to_stop_within_its_own_grace_before_killing_it() -> None:
    from runtime.config import Config

    config = Config()
    graces = {"worker": config.async_.shutdown_grace_s, "streams": config.streams.shutdown_grace_s,
              "scheduler": config.scheduler.shutdown_grace_s}
    for role, grace_s in graces.items():
        period = COMPOSE["services"][role].get("stop_grace_period", "10s")     # Docker's default: 10 s
        assert period.endswith("s") and float(period[:-1]) > grace_s, (role, period)


def test_the_dockerfile_is_one_slim_image_that_carries_the_jail() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert re.match(r"FROM python:3\.1[1-9]-slim$", lines[0])
    installs = " ".join(line for line in lines if "apt-get install" in line)
    assert {"bubblewrap", "util-linux", "libseccomp2"} <= set(installs.split())
    # root in the container builds the jails; each sandbox runs as its own unprivileged user
    assert [line.split()[1] for line in lines if line.startswith("USER ")][-1] == "root"
    assert any("pip install ." in line for line in lines)
    assert lines[-2] == 'ENTRYPOINT ["lambent-entrypoint"]'
    assert lines[-1].startswith("CMD [\"lambent\", \"serve\"")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".state" in ignored


def test_the_roles_that_run_functions_get_what_a_jail_needs_and_no_more() -> None:
    for name in ("gateway", "worker", "streams"):
        service = SERVICES[name]
        assert service["cap_add"] == ["SYS_ADMIN"], name
        assert sorted(service["security_opt"]) == ["apparmor=unconfined", "seccomp=unconfined",
                                                   "systempaths=unconfined"], name
        assert service["cgroup"] == "private", name
        assert "privileged" not in service and "pid" not in service and "network_mode" not in service, name
    assert not {"cap_add", "security_opt"} & SERVICES["scheduler"].keys()     # it runs no function
    with open(ROOT / "docker-compose.yml") as compose:
        text = compose.read()
    for grant in ("SYS_ADMIN", "seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined",
                  "cgroup: private"):
        line = next(line for line in text.splitlines() if grant in line and not line.lstrip().startswith("#"))
        assert "#" in line, f"{grant} has no comment saying why"


def test_the_entrypoint_runs_the_role_it_is_given(tmp_path: Path) -> None:
    out = subprocess.run([str(ROOT / "scripts" / "docker-entrypoint.sh"), "sh", "-c", "echo role ran"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "role ran\n", out.stderr


def test_the_redis_command_runs_with_the_settings_it_asks_for(tmp_path: Path) -> None:
    """The service's command and health check, run by sh as in the container, with a stand-in for the image's
    docker-entrypoint.sh that runs redis-server on a free loopback port instead of 0.0.0.0:6379, in tmp_path
    instead of /data."""
    assert shutil.which("redis-server"), "redis-server is installed by make test"
    port = free_port()
    shim = tmp_path / "bin" / "docker-entrypoint.sh"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nfor arg do shift; [ "$arg" = /data ] && arg="{tmp_path}"; set -- "$@" "$arg"; done\n'
                    f'exec "$@" --port {port} --bind 127.0.0.1\n')          # the redis-data volume: tmp_path here
    shim.chmod(0o755)
    environ = {"LAMBENT_REDIS_PASSWORD": PASSWORD}
    env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
           **{key: interpolate(value, environ) for key, value in SERVICES["redis"]["environment"].items()}}
    command = [interpolate(part, environ) for part in SERVICES["redis"]["command"]]
    assert command[:2] == ["sh", "-c"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, decode_responses=True)

        def up() -> bool:
            assert process.poll() is None, f"the compose redis command exited with {process.returncode}"
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, timeout=10, message="the compose redis command to answer")
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert client.config_get("requirepass")["requirepass"] == PASSWORD
        assert client.config_get("dir")["dir"] == str(tmp_path)           # --dir: /data, the volume, in the image
        client.close()
        with pytest.raises(redis.AuthenticationError):                   # NOAUTH without the password
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).ping()
        with pytest.raises(redis.AuthenticationError):                   # WRONGPASS with another
            redis.Redis(host="127.0.0.1", port=port, password="wrong", socket_timeout=5).ping()
        # exec all the way down: the server is the process compose started, and ps does not show the password.
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert b"redis-server" in cmdline and PASSWORD.encode() not in cmdline
        # The health check, as the container runs it (CMD-SHELL: sh -c, with the service's environment), here
        # against this port rather than 6379.
        check = SERVICES["redis"]["healthcheck"]["test"][1].replace("redis-cli", f"redis-cli -p {port}", 1)
        assert subprocess.run(["sh", "-c", check], env=env, capture_output=True, timeout=10).returncode == 0
        # ...and it fails when the password does not match (redis-cli itself exits 0 on NOAUTH).
        assert subprocess.run(["sh", "-c", check], env={**env, "REDISCLI_AUTH": "wrong"},
                              capture_output=True, timeout=10).returncode != 0
    finally:
        process.terminate()
        process.wait(10)


def _args(command: list[str], port: int) -> list[str]:
    """The container's `lambent ROLE ARGS...`, run here as ROLE ARGS of this package (start_role): 0.0.0.0:8080
    becomes loopback, a free port."""
    return [("127.0.0.1" if part == "0.0.0.0" else str(port) if part == "8080" else part) for part in command[1:]]


def test_each_role_starts_with_the_compose_command_and_environment(redis_url: str, tmp_path: Path) -> None:
    """Every role, as compose runs it; then each one's health check, and the host's lambent CLI with LAMBENT_SECRET."""
    from .test_cli import lambent

    bootstrap = kafka_client.bootstrap()
    port = free_port()
    metrics_ports = {name: free_port() for name in METRICS_ROLES}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    envs: dict[str, dict[str, str]] = {}
    try:
        for name in ROLES:
            service = SERVICES[name]
            env = clean_env()
            # LAMBENT_KAFKA_PASSWORD: the test broker's (compose's Kafka has the one the shell exported)
            environ = {**PASSWORDS, "LAMBENT_KAFKA_PASSWORD": kafka_client.password() or KAFKA_PASSWORD}
            env.update({key: interpolate(str(value), environ) for key, value in service["environment"].items()})
            env["LAMBENT_REDIS_URL"] = redis_url                            # redis://redis:6379/0 in compose
            env["LAMBENT_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap              # kafka:9092 in compose
            if os.environ.get("LAMBENT_TEST_SQS_ENDPOINT"):                 # http://sqs-guard:9324 in compose
                env["LAMBENT_SQS__ENDPOINT_URL"] = os.environ["LAMBENT_TEST_SQS_ENDPOINT"]
                env["LAMBENT_SQS__SECRET_ACCESS_KEY"] = os.environ.get("LAMBENT_TEST_SQS_SECRET", "")  # its guard's
            env["LAMBENT_FUNCTIONS_DIR"] = str(ROOT / "functions")          # /app/functions in the image
            env["LAMBENT_DATA_DIR"] = str(tmp_path / "data")                # /var/lib/lambent, the code-cache volume
            env["LAMBENT_CONFIG"] = str(ROOT / "config.yaml")               # /app/config.yaml in the image
            if name in METRICS_ROLES:                                       # 0.0.0.0:9101... in the container
                assert env["LAMBENT_METRICS__HOST"] == "0.0.0.0"
                env["LAMBENT_METRICS__HOST"] = "127.0.0.1"
                env[f"LAMBENT_METRICS__{METRICS_ROLES[name].upper()}"] = str(metrics_ports[name])
            envs[name] = env
            logs[name] = tmp_path / f"{name}.log"
            role, *role_args = _args(service["command"], port)
            processes[name] = start_role(role, logs[name], args=role_args, env=env,
                                         cwd=Path(tempfile.gettempdir())).process

        def health_check(name: str, env: dict[str, str]) -> bool:
            """The service's own health check command, as its container runs it, against this host's port."""
            assert processes[name].poll() is None, logs[name].read_text()
            check = [sys.executable if part == "python" else part for part in SERVICES[name]["healthcheck"]["test"][1:]]
            here = str(metrics_ports[name]) if name in METRICS_ROLES else str(port)
            check[-1] = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{here}", check[-1])
            return subprocess.run(check, env=env, capture_output=True, timeout=10).returncode == 0

        for name in ROLES:
            wait_until(lambda: health_check(name, envs[name]), timeout=60, interval=0.2,
                       message=f"the {name}'s compose health check")
        for name in METRICS_ROLES:                     # ...which needs the admin key: a wrong one fails it
            assert not health_check(name, {**envs[name], "LAMBENT_SECRET": "wrong"}), name
        for name, line in (("worker", "worker started"), ("streams", "streams started"),
                           ("scheduler", "scheduler started")):
            wait_until(lambda: line in logs[name].read_text() or processes[name].poll() is not None, timeout=60,
                       message=f"{name} to start")
            assert processes[name].poll() is None, logs[name].read_text()
        response = httpx.post(f"http://127.0.0.1:{port}/functions/hello/invoke", json={"name": "compose"}, timeout=10)
        assert response.json()["message"] == "Hello, compose!"

        # The host's CLI, in the shell that exported LAMBENT_SECRET: deploy, alias, dlq and delete are admin's.
        cli = {"LAMBENT_SECRET": ADMIN_SECRET, "LAMBENT_URL": f"http://127.0.0.1:{port}"}
        for args in (("deploy", str(ROOT / "functions" / "hello"), "--name", "compose-hello"),
                     ("alias", "compose-hello", "live", "1"), ("dlq", "ls", "compose-hello"),
                     ("delete", "compose-hello", "--yes")):
            done = lambent(*args, env=cli, cwd=tmp_path, timeout=120)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        refused = lambent("deploy", str(ROOT / "functions" / "hello"), "--name", "compose-hello",
                          env={"LAMBENT_URL": cli["LAMBENT_URL"]}, cwd=tmp_path)
        assert refused.returncode == 1 and refused.stderr.splitlines()[-1].startswith("error: 401 "), refused.stderr
        assert not (tmp_path / "data" / "admin.key").exists()             # the configured key is the admin key
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
