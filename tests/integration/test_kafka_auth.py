"""The suite's Kafka takes SASL (SCRAM-SHA-512) logins only: `scoring stream` and
`scoring produce --kafka` with a wrong password, or with no credentials at all, stop at
start with one line that names the settings and says what the broker did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.settings import KafkaSettings
from tests.helpers import demo_requests

pytestmark = [pytest.mark.integration]

WRONG = "not-the-kafka-password-9"


def env_for(kafka_env: dict[str, str], tmp_path: Path, case: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORING_")}
    env.update(kafka_env)
    env["SCORING_DATABASE_URL"] = f"sqlite:///{tmp_path / 'unused.db'}"
    env["SCORING_MODEL_STORE"] = str(tmp_path / "store")
    env["SCORING_KAFKA_TOPIC"] = "auth-test-never-used"
    if case == "wrong-password":
        env["SCORING_KAFKA_PASSWORD"] = WRONG
    else:  # no credentials: a plain client on the SASL listener
        for key in ("SECURITY_PROTOCOL", "SASL_MECHANISM", "USERNAME", "PASSWORD"):
            env.pop(f"SCORING_KAFKA_{key}", None)
    return env


def test_the_suite_connects_with_sasl(kafka_settings: KafkaSettings) -> None:
    assert kafka_settings.security_protocol.startswith("SASL")
    assert kafka_settings.username and kafka_settings.password is not None


def test_wrong_or_missing_credentials_fail_at_start_naming_the_setting(
    kafka_env: dict[str, str], tmp_path: Path
) -> None:
    lines = tmp_path / "requests.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in demo_requests(2)) + "\n")
    commands = {"stream": ["stream"], "produce": ["produce", "--kafka", "--file", str(lines)]}
    procs = {}
    for case in ("wrong-password", "no-credentials"):
        for name, argv in commands.items():
            procs[(case, name)] = subprocess.Popen(  # all at once: each waits out a timeout
                [sys.executable, "-m", "scoring.cli", *argv],
                env=env_for(kafka_env, tmp_path, case),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
    for (case, name), proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        errors = [line for line in out.splitlines() if "error" in line.lower()]
        assert proc.returncode != 0, (case, name, out)
        assert len(errors) == 1 and "Traceback" not in out, (case, name, out)
        assert WRONG not in out and kafka_env["SCORING_KAFKA_PASSWORD"] not in out
        line = " ".join(errors[0].split())
        assert f"Kafka at {kafka_env['SCORING_KAFKA_BOOTSTRAP']}" in line, (case, name, out)
        if case == "wrong-password":
            assert "refused the login of SCORING_KAFKA_USERNAME=scoring" in line, line
            assert "SCORING_KAFKA_PASSWORD" in line, line
            # What the broker said: its reply when it arrives before the broker closes
            # the connection, else that it closed it mid-authentication.
            said = ("invalid credentials", "closed the connection during SASL authentication")
            assert any(s in line for s in said), line
        else:
            assert "SCORING_KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in line, line
            assert "requires SASL or TLS" in line and "socket disconnected" in line, line
