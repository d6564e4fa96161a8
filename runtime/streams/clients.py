"""How every kafka-python client of Lambent connects: the bootstrap servers and, with `kafka_sasl`, its login.

The streams consumers and the on_failure topic producer are built with `client_options(config)`, so that no
client is ever made without the credentials (a broker that requires SASL closes such a connection after
ApiVersions, and kafka-python only says "Unable to bootstrap" 30 s later; `preflight.check_kafka` says why at
start instead).
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import Config

# kafka-python warns "Sending username and password in the clear" on every SASL_PLAINTEXT connection it opens
# (several per consumer, again on each reconnect). check_kafka says it once per process instead.
logging.getLogger("kafka.net.sasl.plain").setLevel(logging.ERROR)
logging.getLogger("kafka.net.sasl.scram").setLevel(logging.ERROR)


def client_options(config: Config) -> dict[str, Any]:
    """The keyword arguments of KafkaConsumer / KafkaProducer / KafkaAdminClient that say where and as whom."""
    options: dict[str, Any] = {"bootstrap_servers": config.kafka_bootstrap_servers}
    sasl = config.kafka_sasl
    if sasl is not None:
        options.update(security_protocol="SASL_PLAINTEXT", sasl_mechanism=sasl.mechanism,
                       sasl_plain_username=sasl.username, sasl_plain_password=sasl.password.get_secret_value())
    return options
