"""The short soak (`scoring bench soak` for 60 s instead of 10 minutes): steady Kafka and
Redis load, a worker SIGKILLed every 20 s, the private Redis restarted at 30 s; every
confirmed request of either source scored exactly once, nothing dead-lettered."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import run_scoring

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_short_soak_loses_and_doubles_nothing(
    pg_server_url: str, kafka_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "soak.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCORING_")},
        **kafka_env,
        "SCORING_DATABASE_URL": pg_server_url,
    }
    done = run_scoring(
        *("bench", "soak", "--duration-s", "60", "--kill-every-s", "20"),
        *("--redis-restart-at-s", "30", "--rate", "40", "--drain-timeout-s", "60"),
        *("--out", str(out)),
        env=env,
        cwd=tmp_path,  # not the checkout: what it imports must be installed (deploy/ too)
        timeout=280,
    )
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    print({k: report[k] for k in ("producing_s", "drain_s", "wall_s", "kills", "redis_restart")})
    for source, counts in report["sources"].items():
        # 40/s for the 60 s (or longer: the load goes on until the last killed worker
        # recovered); the paced sends start a moment after the clock, so a few fewer
        assert counts["events_in"] >= 40 * 58, (source, counts)
        assert counts["results_out"] == counts["events_in"], (source, counts)
        assert (counts["lost"], counts["duplicated"]) == (0, 0), (source, counts)
        assert counts["dead_letters"] == 0 and counts["not_ok"] == 0, (source, counts)
        assert counts["results_never_confirmed"] == 0, (source, counts)
    kills = report["kills"]
    assert kills["landed"] >= 2 and kills["recovered"] == kills["landed"], kills
    restart = report["redis_restart"]
    assert restart["happened"] and restart["results_after"] > 0, restart
    assert restart["first_result_after_s"] is not None, restart
    assert report["left_queued_or_unacked"] == 0 and report["drained"], report
    assert report["unexpected_exits"] == [], report["unexpected_exits"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "lost" in done.stdout and "duplicated" in done.stdout  # the table was printed
