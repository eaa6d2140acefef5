"""The `scoring` command as people use it: the demo, the registry, the bulk command."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_scoring, summary


def scoring(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCORING_")}
    return run_scoring(*args, env={**clean, **(env or {})}, cwd=cwd)


@pytest.mark.slow
def test_demo_on_embedded_defaults_scores_everything_and_loses_nothing(tmp_path: Path) -> None:
    done = scoring(tmp_path, "demo", "--rows", "3000")
    assert done.returncode == 0, done.stderr + done.stdout
    lines = summary(done.stdout)
    assert lines["ok"] == "3000" and lines["lost"] == "0" and lines["invalid"] == "0"
    assert float(lines["accuracy"].rstrip("%")) > 90
    assert (tmp_path / "scoring.db").exists()
    again = scoring(tmp_path, "demo", "--rows", "500")  # reuses the registered model
    assert again.returncode == 0 and "training" not in again.stdout


def test_registry_commands_and_json_listing(
    tmp_path: Path, demo_artifact: Path, demo_artifact_v2: Path
) -> None:
    env = {
        "SCORING_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
        "SCORING_MODEL_STORE": str(tmp_path / "store"),
    }
    assert scoring(tmp_path, "db", "upgrade", env=env).returncode == 0
    assert (
        scoring(tmp_path, "models", "register", "demo", str(demo_artifact), env=env).returncode == 0
    )
    out = scoring(tmp_path, "models", "register", "demo", str(demo_artifact_v2), env=env)
    assert "registered demo v2 (staged)" in out.stdout
    # every version is validated before promotion, eager ones too (against the active one)
    gate = ("--backend", "eager", "--no-timing")
    assert scoring(tmp_path, "models", "validate", "demo", "2", *gate, env=env).returncode == 0
    assert (
        "demo v2 is active (eager)"
        in scoring(tmp_path, "models", "promote", "demo", "2", env=env).stdout
    )
    assert (
        "demo v1 is active again" in scoring(tmp_path, "models", "rollback", "demo", env=env).stdout
    )
    listing = json.loads(scoring(tmp_path, "models", "list", "--json", env=env).stdout)
    assert [(v["version"], v["status"]) for v in listing] == [(1, "active"), (2, "retired")]
    schema = listing[0]["input_schema"]
    assert len(schema) == 30 and set(schema.values()) == {"float"} and "mean_radius" in schema
    missing = scoring(tmp_path, "models", "promote", "demo", "9", env=env)
    assert missing.returncode == 2 and "no version 9" in missing.stderr


def test_worker_refuses_gpus_on_a_machine_without_them(tmp_path: Path) -> None:
    done = scoring(tmp_path, "worker", "--gpus", "0", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "--cpu N" in done.stderr
