"""The test broker and its login, for every Kafka client a test makes and every role a test starts.

scripts/test.sh starts Kafka with scripts/kafka.sh, which requires SASL PLAIN as `lambent` on both listeners, and
exports LAMBENT_TEST_KAFKA_BOOTSTRAP, LAMBENT_TEST_KAFKA_PASSWORD and LAMBENT_TEST_KAFKA_STATE (its state dir).
Without a password (a PLAINTEXT broker of one's own) the clients connect without credentials.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

USERNAME = "lambent"          # scripts/kafka.sh's one user
MECHANISM = "PLAIN"


def bootstrap() -> str:
    address = os.environ.get("LAMBENT_TEST_KAFKA_BOOTSTRAP")
    if not address:
        pytest.fail("LAMBENT_TEST_KAFKA_BOOTSTRAP is not set: run the tests with `make test`, which starts Kafka")
    return address


def password() -> str | None:
    return os.environ.get("LAMBENT_TEST_KAFKA_PASSWORD") or None


def client_options() -> dict[str, Any]:
    """kafka-python's connection arguments for the test broker: its address and, when it needs one, the login."""
    options: dict[str, Any] = {"bootstrap_servers": bootstrap()}
    secret = password()
    if secret is not None:
        options.update(security_protocol="SASL_PLAINTEXT", sasl_mechanism=MECHANISM, sasl_plain_username=USERNAME,
                       sasl_plain_password=secret)
    return options


def config() -> dict[str, Any]:
    """Lambent's config.yaml keys for the test broker (kafka_bootstrap_servers and kafka_sasl)."""
    keys: dict[str, Any] = {"kafka_bootstrap_servers": bootstrap()}
    secret = password()
    if secret is not None:
        keys["kafka_sasl"] = {"mechanism": MECHANISM, "username": USERNAME, "password": secret}
    return keys


def state_dir() -> Path:
    folder = os.environ.get("LAMBENT_TEST_KAFKA_STATE")
    if not folder:
        pytest.fail("LAMBENT_TEST_KAFKA_STATE is not set: run the tests with `make test`, which starts Kafka")
    return Path(folder)


def controller() -> str:
    """The test broker's controller listener (host:port), from the server.properties scripts/kafka.sh wrote."""
    for line in (state_dir() / "server.properties").read_text().splitlines():
        if line.startswith("controller.quorum.voters="):
            return line.split("@", 1)[1].strip()
    raise AssertionError("no controller.quorum.voters in the test broker's server.properties")


def call(address: str, api_key: int, version: int, body: bytes = b"", *, flexible: bool = False) -> bytes:
    """One raw Kafka request on a fresh connection, without logging in: the answer's body after the correlation
    id, or b"" when the broker closes the connection instead of answering."""
    host, _, port = address.rpartition(":")
    header = struct.pack(">hhih", api_key, version, 7, len(b"test")) + b"test" + (b"\0" if flexible else b"")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) >= 4 and len(data) >= 4 + struct.unpack(">i", data[:4])[0]:
                break
    return data[8:] if len(data) >= 8 else b""


API_VERSIONS, METADATA = 18, 3
METADATA_V12_ALL_TOPICS = b"\0\1\0\0"      # topics null, allow auto-creation, no authorized ops, no tagged fields
