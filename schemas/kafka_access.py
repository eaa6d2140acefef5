"""The start-up Kafka check: one metadata request, so that a process fails at start with
which setting is wrong and what the broker did, instead of retrying for ever.

kafka-python reports most refusals only as "Unable to bootstrap" after its timeout: a
broker that rejects SCRAM credentials, or gets a plain request on a SASL listener, just
closes the connection. The check listens to the client's own log while it runs and tells
those cases apart from an unreachable broker.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from schemas.settings import KafkaSettings


class KafkaAccessError(RuntimeError):
    """Kafka cannot be used with these settings; the message names the setting."""


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a log line we cannot format tells us nothing
            return

    def said(self, *needles: str) -> str | None:
        """The last line the client logged with any of `needles`, without its prefix."""
        for line in reversed(self.lines):
            if any(n in line for n in needles):
                found = re.search(r"\b(\w+Error: [^()]+)", line)
                text = found.group(1) if found else line.split(">: ", 1)[-1]
                return re.sub(r"^(\w+: )\1", r"\1", text.strip())[:300]
        return None


def check_kafka(
    kafka: KafkaSettings, timeout_s: float = 10.0, client_id: str = "scoring-check"
) -> None:
    """Fetch the cluster's metadata once; raises KafkaAccessError naming the setting and
    what the broker did (ValueError for settings that are incomplete)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    config = kafka.client_config()  # ValueError: a SASL protocol without credentials
    quiet, recorder = logging.getLogger("kafka"), _Recorder()
    level, propagate = quiet.level, quiet.propagate
    quiet.setLevel(logging.DEBUG)
    quiet.propagate = False  # the caller reports a failure once
    quiet.addHandler(recorder)
    try:
        consumer = KafkaConsumer(
            **config,
            client_id=client_id,
            bootstrap_timeout_ms=int(timeout_s * 1000),
            request_timeout_ms=int(timeout_s * 1000) + 1000,
        )
        try:
            consumer.topics()
        finally:
            consumer.close(autocommit=False)
    except KafkaError as exc:
        raise KafkaAccessError(_explain(kafka, config, exc, recorder)) from exc
    finally:
        quiet.removeHandler(recorder)
        quiet.setLevel(level)
        quiet.propagate = propagate


def _explain(kafka: KafkaSettings, config: dict[str, Any], exc: Exception, log: _Recorder) -> str:
    where = f"Kafka at {kafka.bootstrap}"
    protocol = kafka.security_protocol
    refused = log.said(
        "SaslAuthenticationFailedError",
        "UnsupportedSaslMechanismError",
        "does not support",
        "Authentication failed",
        "Failed to authenticate",
    )
    if refused:
        return (
            f"{where} refused the login of SCORING_KAFKA_USERNAME={kafka.username} "
            f"(SCORING_KAFKA_PASSWORD, SCORING_KAFKA_SASL_MECHANISM={kafka.sasl_mechanism}): "
            f"{refused}"
        )
    sasl = "sasl_mechanism" in config
    in_sasl = any("Sasl" in line or "SASL" in line for line in log.lines)
    dropped = log.said("socket disconnected", "Connection reset", "ECONNRESET")
    tls = log.said("SSL", "certificate", "CERTIFICATE")
    if tls and ("ssl_cafile" in config or protocol.endswith("SSL")):
        return (
            f"{where}: the TLS handshake failed with SCORING_KAFKA_SECURITY_PROTOCOL={protocol}"
            f" (SCORING_KAFKA_SSL_CAFILE={kafka.ssl_cafile}): {tls}"
        )
    if sasl and in_sasl and dropped:
        return (
            f"{where} refused the login of SCORING_KAFKA_USERNAME={kafka.username} "
            f"(SCORING_KAFKA_PASSWORD, SCORING_KAFKA_SASL_MECHANISM={kafka.sasl_mechanism}): "
            f"the broker closed the connection during SASL authentication ({dropped})"
        )
    if not sasl and dropped:
        return (
            f"{where} closed the connection on the first request with "
            f"SCORING_KAFKA_SECURITY_PROTOCOL={protocol}: the listener requires SASL or TLS; "
            "set SCORING_KAFKA_SECURITY_PROTOCOL, SCORING_KAFKA_USERNAME and "
            f"SCORING_KAFKA_PASSWORD ({dropped})"
        )
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return f"cannot reach {where} (SCORING_KAFKA_BOOTSTRAP): {first}"
