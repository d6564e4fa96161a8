"""Kafka requires a login that no sandbox has, as Redis requires a password.

The test broker (scripts/kafka.sh, started by scripts/test.sh) requires SASL PLAIN on both of its listeners;
Lambent's roles say at start why they cannot log in (preflight.check_kafka); a jailed function that knows the
broker's address gets no further than the SASL handshake. That the streams role still consumes with the login
is what tests/test_streams.py shows.
"""

from __future__ import annotations

import gc
import logging
import re
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError

from runtime.config import Config, ConfigError
from runtime.preflight import KafkaUnfit, check_kafka

from . import kafka_client
from .helpers import ROOT, Gateway, clean_env, fresh_redis_url, start_gateway

KAFKA_SH = ROOT / "scripts" / "kafka.sh"
WRONG = "0" * 64


def required_password() -> str:
    password = kafka_client.password()
    if password is None:
        pytest.fail("LAMBENT_TEST_KAFKA_PASSWORD is not set: run the tests with `make test`, whose Kafka requires it")
    return password


def login(password: str, username: str = kafka_client.USERNAME) -> dict[str, Any]:
    return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": username,
            "sasl_plain_password": password}


def lambent_config(**keys: Any) -> Config:
    return Config.model_validate({"kafka_bootstrap_servers": kafka_client.bootstrap(), **keys})


# -- the configuration -----------------------------------------------------------------------------------------

def test_kafka_sasl_comes_from_config_or_environment_and_its_password_is_never_shown(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({"kafka_sasl": {"mechanism": "SCRAM-SHA-256", "username": "app",
                                                          "password": "from-the-file"}}))
    from_file = Config.load(config_file, environ={}).kafka_sasl
    assert from_file is not None and from_file.password.get_secret_value() == "from-the-file"
    # the environment overrides any key of it, as every key of config.yaml; compose's own variable is no key
    config = Config.load(config_file, environ={"LAMBENT_KAFKA_SASL__PASSWORD": "s3cret-from-env",
                                               "LAMBENT_KAFKA_PASSWORD": "compose's, not a key"})
    assert config.kafka_sasl is not None
    assert (config.kafka_sasl.mechanism, config.kafka_sasl.username) == ("SCRAM-SHA-256", "app")
    assert config.kafka_sasl.password.get_secret_value() == "s3cret-from-env"
    assert "s3cret-from-env" not in repr(config) and "s3cret-from-env" not in str(config.model_dump(mode="json"))
    # given only a password, the user and mechanism are scripts/kafka.sh's; given nothing, no login at all
    alone = Config.model_validate({"kafka_sasl": {"password": "p"}})
    assert alone.kafka_sasl is not None
    assert (alone.kafka_sasl.mechanism, alone.kafka_sasl.username) == ("PLAIN", "lambent")
    assert Config.model_validate({}).kafka_sasl is None
    for bad, message in (({"username": "app"}, "kafka_sasl.password: Field required"),
                         ({"password": ""}, "kafka_sasl.password: the password is empty"),
                         ({"password": "p", "mechanism": "GSSAPI"}, "kafka_sasl.mechanism"),
                         ({"password": "p", "pasword": "q"}, "kafka_sasl.pasword: unknown key")):
        config_file.write_text(yaml.safe_dump({"kafka_sasl": bad}))
        with pytest.raises(ConfigError, match=message):
            Config.load(config_file, environ={})


# -- the test broker -------------------------------------------------------------------------------------------

# kafka-python leaves the sockets of a bootstrap that failed to the garbage collector (collected below).
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_the_test_broker_takes_its_login_and_refuses_a_client_without_it_or_with_a_wrong_password() -> None:
    # given the test broker's address, and its password (or none, or another)
    password = required_password()
    admin = KafkaAdminClient(bootstrap_servers=kafka_client.bootstrap(), bootstrap_timeout_ms=10_000,
                             request_timeout_ms=10_000, **login(password))
    admin.list_topics()
    admin.close()
    for refused in ({}, login(WRONG), login(password, username="admin")):
        # when a client connects without the login, then it never gets as far as the cluster's metadata
        with pytest.raises(KafkaError):
            KafkaAdminClient(bootstrap_servers=kafka_client.bootstrap(), bootstrap_timeout_ms=3000,
                             request_timeout_ms=3000, **refused).list_topics()
    gc.collect()


def test_both_listeners_answer_an_unauthenticated_request_by_closing_the_connection() -> None:
    for address in (kafka_client.bootstrap(), kafka_client.controller()):
        # ApiVersions is answered (it is Kafka; a client learns which SASL versions to use)...
        assert kafka_client.call(address, kafka_client.API_VERSIONS, 0)[:2] == b"\0\0", address
        # ...and the first request that is neither it nor a SASL handshake ends the connection
        assert kafka_client.call(address, kafka_client.METADATA, 12, kafka_client.METADATA_V12_ALL_TOPICS,
                                 flexible=True) == b"", address


def test_kafka_sh_keeps_the_password_in_0600_files_off_the_command_line_and_out_of_its_log() -> None:
    state = kafka_client.state_dir()
    password = required_password()
    assert re.fullmatch(r"[0-9a-f]{64}", password)          # 32 random bytes, hex
    assert (state / "kafka.password").read_text().strip() == password
    for name in ("kafka.password", "server.properties", "probe.properties"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name
    pid = int((state / "kafka.pid").read_text())
    assert b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert password not in (state / "kafka.log").read_text(errors="replace")
    printed = subprocess.run([str(KAFKA_SH), "password", str(state)], capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0 and printed.stdout.strip() == password
    # `bootstrap` (as `start` before it reuses a running broker) logs in with the stored password first
    running = subprocess.run([str(KAFKA_SH), "bootstrap", str(state)], capture_output=True, text=True, timeout=30)
    assert running.returncode == 0 and running.stdout.strip() == kafka_client.bootstrap(), running.stderr


# -- what a role says at start ---------------------------------------------------------------------------------

def test_a_role_without_the_login_or_with_a_wrong_one_is_refused_with_the_reason_and_no_password() -> None:
    password = required_password()
    check_kafka(lambent_config(kafka_sasl={"password": password}))          # the right one: no complaint
    with pytest.raises(KafkaUnfit, match=r"requires SASL authentication \(PLAIN\) and kafka_sasl has no "
                                         r"credentials.*LAMBENT_KAFKA_SASL__PASSWORD"):
        check_kafka(lambent_config())
    with pytest.raises(KafkaUnfit, match="authentication failed: it refused user 'lambent'") as wrong:
        check_kafka(lambent_config(kafka_sasl={"password": WRONG}))
    with pytest.raises(KafkaUnfit, match="does not offer SASL SCRAM-SHA-512 .it offers PLAIN") as mechanism:
        check_kafka(lambent_config(kafka_sasl={"password": password, "mechanism": "SCRAM-SHA-512"}))
    for refused in (wrong, mechanism):
        assert password not in str(refused.value) and WRONG not in str(refused.value)
        assert "\n" not in str(refused.value)


@pytest.fixture
def plaintext_kafka() -> Iterator[str]:
    """A listener that answers a SaslHandshake as a PLAINTEXT Kafka listener does (error 34, ILLEGAL_SASL_STATE,
    no mechanisms; seen from Kafka 4.1): a broker that lets in any client."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                size = struct.unpack(">i", conn.recv(4, socket.MSG_WAITALL))[0]
                request = conn.recv(size, socket.MSG_WAITALL)
                answer = request[4:8] + struct.pack(">hi", 34, 0)       # correlation id, error, no mechanisms
                conn.sendall(struct.pack(">i", len(answer)) + answer)

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_a_kafka_that_lets_in_anyone_gets_a_loud_warning_and_a_login_for_it_is_refused(
        plaintext_kafka: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime.preflight"):
        check_kafka(Config.model_validate({"kafka_bootstrap_servers": plaintext_kafka}))
    warning = next(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    assert f"Kafka at {plaintext_kafka} accepts clients without credentials" in warning
    assert "a function's sandbox" in warning and "kafka_sasl" in warning
    with pytest.raises(KafkaUnfit, match="does not use SASL"):
        check_kafka(Config.model_validate({"kafka_bootstrap_servers": plaintext_kafka,
                                           "kafka_sasl": {"password": "x" * 16}}))


def test_lambent_streams_without_the_login_exits_2_with_a_one_line_error(tmp_path: Path, redis_url: str) -> None:
    def streams(**keys: Any) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "redis_url": redis_url, "kafka_bootstrap_servers": kafka_client.bootstrap(), "data_dir": str(tmp_path),
            "functions_dir": str(tmp_path / "functions"), "sandbox": {"isolation": "none"},
            "metrics": {"streams_port": 0}, **keys}))
        return subprocess.run([sys.executable, "-m", "runtime", "streams"],
                              env=clean_env({"LAMBENT_CONFIG": str(config)}), capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)

    missing = streams()
    assert missing.returncode == 2, missing.stderr
    assert re.search(r"^error: Kafka at \S+ requires SASL authentication \(PLAIN\) and kafka_sasl has no "
                     r"credentials\..*$", missing.stderr, re.MULTILINE), missing.stderr
    wrong = streams(kafka_sasl={"password": WRONG})
    assert wrong.returncode == 2 and "authentication failed" in wrong.stderr, wrong.stderr
    assert WRONG not in wrong.stderr


# -- a jailed function that finds the broker -------------------------------------------------------------------

PROBE = '''
def handler(event, context):
    scope = {"event": event, "context": context}
    exec(event["code"], scope)
    return scope.get("result")
'''

# Raw Kafka requests, since kafka-python is not in the sandbox (nor would a client library help without the
# password): each on a fresh connection; what comes back is how many bytes, and whether the victim's record is in.
ATTACK = textwrap.dedent('''
    import os, socket, struct

    def exchange(address, *requests):
        """The requests one after another on one connection; the last answer (0 bytes: the broker hung up)."""
        host, _, port = address.rpartition(":")
        data = b""
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            for api_key, version, body, flexible in requests:
                header = struct.pack(">hhih", api_key, version, 1, 5) + b"thief" + (b"\\0" if flexible else b"")
                try:
                    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
                    size = sock.recv(4, socket.MSG_WAITALL)
                    data = sock.recv(struct.unpack(">i", size)[0], socket.MSG_WAITALL) if len(size) == 4 else b""
                except ConnectionResetError:
                    data = b""
                if not data:
                    break
        return {"bytes": len(data), "error": struct.unpack(">h", data[4:6])[0] if len(data) >= 6 else None,
                "record": event["victim"].encode() in data}

    topic = event["topic"].encode()
    fetch = (struct.pack(">iiiib", -1, 0, 0, 1 << 20, 0) + struct.pack(">ih", 1, len(topic)) + topic
             + struct.pack(">iiqi", 1, 0, 0, 1 << 20))
    guess = b"\\0lambent\\0" + b"0" * 64
    result = {"environment": sorted(os.environ.values())}
    for name, address in event["addresses"].items():
        result[name] = {
            "api_versions": exchange(address, (18, 0, b"", False)),
            "metadata": exchange(address, (3, 12, b"\\0\\1\\0\\0", True)),
            "fetch": exchange(address, (1, 4, fetch, False)),
            "guess": exchange(address, (17, 1, struct.pack(">h", 5) + b"PLAIN", False),
                              (36, 0, struct.pack(">i", len(guess)) + guess, False)),
        }
''')


@pytest.fixture(scope="module")
def jailed(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    """A jailed gateway with the Kafka login in its config and in its environment, as a streams role has."""
    workdir = tmp_path_factory.mktemp("kafka-jailed")
    (workdir / "fn" / "probe").mkdir(parents=True)
    (workdir / "fn" / "probe" / "handler.py").write_text(PROBE)
    (workdir / "fn" / "probe" / "function.yaml").write_text(yaml.safe_dump({"timeout": 30}))
    gateway = start_gateway(workdir, fresh_redis_url(redis_base_url), functions_dir=workdir / "fn",
                            config={"sandbox": {"isolation": "jail"}, **kafka_client.config()},
                            env={"LAMBENT_KAFKA_SASL__PASSWORD": required_password()})
    yield gateway
    gateway.stop()


def test_a_jailed_function_that_finds_the_broker_can_neither_list_topics_nor_consume(jailed: Gateway) -> None:
    # given another function's stream record on a topic of its own
    topic, victim = f"victim-{uuid.uuid4().hex[:8]}", f"victim-record-{uuid.uuid4().hex}"
    admin = KafkaAdminClient(**kafka_client.client_options())
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = KafkaProducer(**kafka_client.client_options())
    producer.send(topic, value=victim.encode()).get(timeout=30)
    producer.close()
    addresses = {"broker": kafka_client.bootstrap(), "controller": kafka_client.controller()}

    # when a jailed function that knows both listeners' addresses, not the password, asks them for it
    response = jailed.invoke("probe", {"code": ATTACK, "addresses": addresses, "topic": topic, "victim": victim})
    assert response.status_code == 200, response.text
    found = response.json()

    # then each listener answers ApiVersions and closes the connection on Metadata and Fetch; a guessed password
    # is refused (SASL_AUTHENTICATION_FAILED); the record never reaches it, nor does the password
    for name in addresses:
        assert found[name]["api_versions"]["bytes"] > 0 and found[name]["api_versions"]["error"] == 0, found
        assert found[name]["metadata"] == {"bytes": 0, "error": None, "record": False}, found
        assert found[name]["fetch"] == {"bytes": 0, "error": None, "record": False}, found
        assert found[name]["guess"]["error"] == 58 and not found[name]["guess"]["record"], found
    assert required_password() not in found["environment"]
    # ...while the record is there for a client with the login
    consumer = KafkaConsumer(topic, **kafka_client.client_options(), auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000, group_id=None)
    assert victim.encode() in [message.value for message in consumer]
    consumer.close()
