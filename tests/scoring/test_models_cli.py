"""`scoring models` as people use it: the gate refuses with exit 1 (bad usage is exit 2),
validate compares with the active version, derive prunes, history says who did what."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_scoring


@pytest.fixture
def scoring(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCORING_")},
        "SCORING_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
        "SCORING_MODEL_STORE": str(tmp_path / "store"),
        "SCORING_TORCH_THREADS": "1",
        "COLUMNS": "200",
        "USER": "ana",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_scoring("models", *args, env=env, cwd=tmp_path)

    return run


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_promotion_goes_through_the_gate_and_history_tells_the_story(
    scoring,  # type: ignore[no-untyped-def]
    demo_artifact: Path,
    demo_artifact_v2: Path,
) -> None:
    _ok(scoring("register", "demo", str(demo_artifact)))
    _ok(scoring("register", "demo", str(demo_artifact_v2)))

    refused = scoring("promote", "demo", "2")  # eager, but never validated
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "demo v2 (eager) has not been validated" in refused.stderr
    assert "--force" in refused.stderr

    missing = scoring("promote", "demo", "9")
    assert missing.returncode == 2 and "no version 9" in missing.stderr

    checked = _ok(scoring("validate", "demo", "2", "--backend", "eager", "--no-timing"))
    assert "against active v1" in checked and "report #1 stored" in checked
    assert "demo v2 is active (eager)" in _ok(scoring("promote", "demo", "2"))

    derived = _ok(scoring("derive", "demo", "2", "--prune", "0.9"))
    assert "derived demo v3 from v2 (staged, eager): hidden [512, 512] -> [51, 51]" in derived
    bad_ratio = scoring("derive", "demo", "2", "--prune", "1.5")
    assert bad_ratio.returncode == 2 and "0 < r < 1" in bad_ratio.stderr

    worse = scoring("validate", "demo", "3", "--backend", "eager", "--no-timing")
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "demo v3 (eager) is worse than active v2" in worse.stdout
    refused = scoring("promote", "demo", "3")
    assert refused.returncode == 1
    assert "v3 (eager) is worse than active v2: accuracy" in refused.stderr
    assert "is active (eager)" in _ok(scoring("promote", "demo", "3", "--force"))
    assert "demo v2 is active again" in _ok(scoring("rollback", "demo"))

    history = json.loads(_ok(scoring("history", "demo", "--json")))
    periods = [(p["version"], p["by"]) for p in history["active_periods"]]
    assert periods == [(1, "promote"), (2, "promote"), (3, "promote"), (2, "rollback")]
    assert history["active_periods"][-1]["until"] is None
    by_v2 = history["active_periods"][1]["gate"]
    assert by_v2["passed"] and by_v2["report_id"] == 1 and not by_v2["forced"]
    assert by_v2["backend"] == "eager" and by_v2["vs_active"]["version"] == 1
    by_v3 = history["active_periods"][2]["gate"]
    assert by_v3["forced"] and "worse than active v2" in by_v3["problem"]
    assert by_v3["report_id"] == 2 and by_v3["passed"] is False
    rollback = history["events"][-1]
    assert (rollback["action"], rollback["version"], rollback["previous_version"]) == (
        "rollback",
        2,
        3,
    )
    assert {(e["host"], e["user"]) for e in history["events"]} == {(socket.gethostname(), "ana")}

    table = _ok(scoring("history", "demo"))
    assert "report #2; FORCED" in table and "ana@" in table

    listing = {v["version"]: v for v in json.loads(_ok(scoring("list", "--json")))}
    assert len(listing[1]["training"]["data"]["sha256"]) == 64
    assert listing[3]["training"]["derived_from"]["version"] == 2
    assert listing[3]["training"]["prune_ratio"] == 0.9
    assert "from v2 (prune 0.9)" in _ok(scoring("list"))

    kept = json.loads(_ok(scoring("report", "demo", "--id", "2")))
    assert kept["version"] == 3 and kept["vs_active"]["version"] == 2
    latest = json.loads(_ok(scoring("report", "demo", "2")))
    assert latest["report_id"] == 1 and latest["summary"]["passed"]


def test_derive_refuses_a_model_family_it_cannot_prune(scoring, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = scoring("derive", "nothing", "1", "--prune", "0.3")
    assert missing.returncode == 2 and "model 'nothing' has no version 1" in missing.stderr
