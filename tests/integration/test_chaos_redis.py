"""25 SIGKILLs at random instants during a bulk run of small chunks (the short version of
`scoring bench chaos`; another run of a quarter as many rows follows if the rows run out
before the kills): every row scored exactly once, nothing left queued or held."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosPlan, run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# 25 kills, each waiting for its target to restart and warm up (about 10 s on 2 cores):
# longer than the suite's 300 s per test.
@pytest.mark.timeout(720)
def test_random_sigkills_lose_and_double_nothing(
    pg_server_url: str, redis_url: str, tmp_path: Path
) -> None:
    plan = ChaosPlan(kills=25, rows=360_000, chunk_size=8, workers=2, max_delay_s=2.0)
    report = run_chaos(plan, pg_server_url, redis_url, tmp_path)
    assert report["kills"] == 25, report  # every kill landed while rows were still arriving
    assert report["rows_in"] == 360_000 + 90_000 * (report["runs"] - 1), report
    assert (report["lost"], report["duplicated"]) == (0, 0), report
    assert report["results_out"] == report["rows_in"]
    assert report["dead_letters"] == 0 and report["left_queued_or_unacked"] == 0, report
