"""`scoring bench e2e` in its smallest mode: every arm runs on the real services, the report
has every ratio, and no arm loses a row. No timing is asserted: speed lives in the bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.e2e import ARMS, TARGETS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATIOS = {
    *TARGETS,
    "vs_per_request",
    "vs_celery_batches",
    "two_workers_vs_one_demo",
    "two_workers_vs_one_minilm",
}


def test_smallest_run_reports_every_ratio_and_loses_nothing(
    redis_url: str, pg_server_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "e2e.json"
    env = {
        **os.environ,
        "SCORING_DATABASE_URL": pg_server_url,
        "SCORING_BROKER_URL": redis_url,
        "SCORING_WORKER_FLUSH_INTERVAL_S": "0.02",
    }
    done = subprocess.run(
        [sys.executable, "-m", "scoring.cli", "bench", "e2e", "--quick", "--rows", "300"]
        + ["--reps", "1", "--seconds", "5", "--model", "demo", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert RATIOS <= set(report["ratios"])
    assert report["lost_rows"] == 0
    demo = report["arms"]["demo"]
    ran = {arm: report["arms"].get(arm) or demo.get(arm) for arm in ARMS}
    assert all(ran.values()), f"arms missing: {[a for a, r in ran.items() if not r]}"
    for arm, figures in ran.items():
        assert figures["lost"] == 0, arm
        assert all(r["rows_in"] == r["rows_out"] > 0 for r in figures["reps"]), arm
    assert "e2e ratios" in done.stdout
