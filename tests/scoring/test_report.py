"""`scoring report`: every section drawn from rows of its table, on SQLite and PostgreSQL;
the file self-contained (nothing to fetch); the latest drift report per version; empty
windows said so, not drawn as empty axes; the command parses durations and shows the
database without its password."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from schemas import names
from schemas.db import make_engine, session_scope
from schemas.redaction import MASK
from schemas.tables import (
    BatchMetric,
    DriftReport,
    Feedback,
    ModelEvent,
    ScoreResult,
    utcnow,
)
from scoring.report import build_report
from scoring.report.queries import MAX_BUCKETS, buckets_for, percentile
from tests.helpers import run_scoring

FEATURES = ("mean radius", "mean texture", "worst area")
SECTIONS = ("throughput", "latency", "batch-sizes", "statuses", "drift", "accuracy", "history")
PLOTS = ("throughput", "latency", "batch-sizes", "statuses", "drift-0", "accuracy", "history")


def drift_stats(psi: dict[str, float], threshold: float = 0.2) -> dict[str, object]:
    return {
        "features": {
            name: {"psi": value, "ks": value / 2, "ks_p": 0.01, "drifted": value > threshold}
            for name, value in psi.items()
        },
        "prediction": {"psi": 0.05, "drifted": False},
        "rows": 500,
        "accuracy": {"labelled": 40, "correct": 36, "accuracy": 0.9},
        "thresholds": {"psi_threshold": threshold, "ks_alpha": 0.01},
    }


def status_of(i: int) -> str:
    for every, status in ((17, names.STATUS_ERROR), (29, names.STATUS_INVALID)):
        if i % every == every - 1:
            return status
    return names.STATUS_EXPIRED if i % 41 == 40 else names.STATUS_OK


def fill(engine: Engine, now: datetime) -> None:
    """40 minutes of traffic from three sources, two versions, labels for some of their
    rows, the registry's changes, two drift reports of v2 and one too old to show."""
    start = now - timedelta(minutes=40)
    with session_scope(engine) as session:
        for i in range(80):
            mix = {"redis": 30, "kafka": 10} if i % 2 else {"bulk": 64}
            session.add(
                BatchMetric(
                    batch_id=f"b-{i}",
                    worker="w1",
                    device="cpu",
                    model_name="demo",
                    model_version=1 + i // 40,
                    backend="eager",
                    source_mix=mix,
                    batch_size=sum(mix.values()) - i % 7,
                    queue_wait_ms=5.0 + i,
                    inference_ms=3.0,
                    rows_per_s=1000.0,
                    created_at=start + timedelta(seconds=30 * i),
                )
            )
        for i in range(400):
            status = status_of(i)
            session.add(
                ScoreResult(
                    request_id=f"r-{i}",
                    model_name="demo",
                    model_version=1 + i // 200,
                    outputs={"label": "malignant" if i % 3 else "benign"}
                    if status == names.STATUS_OK
                    else None,
                    status=status,
                    source=("redis", "kafka", "bulk")[i % 3],
                    queue_ms=float(1 + i % 50),
                    inference_ms=2.0,
                    scored_at=start + timedelta(seconds=6 * i),
                )
            )
        for i in range(0, 400, 4):
            label = "malignant" if (i % 3 and i % 5) else "benign"
            session.add(Feedback(request_id=f"r-{i}", model_name="demo", label=label))
        for at, version, action, previous in (
            (1, 1, "register", None),
            (2, 1, "promote", None),
            (20, 2, "register", None),
            (21, 2, "validate", None),
            (22, 2, "promote", 1),
            (35, 1, "rollback", 2),
        ):
            session.add(
                ModelEvent(
                    name="demo",
                    version=version,
                    action=action,
                    previous_version=previous,
                    at=start + timedelta(minutes=at),
                    host="ops-host",
                    username="ana",
                )
            )
        for made, psi in (
            (5, {"stale feature": 0.9}),
            (1, dict(zip(FEATURES, (0.31, 0.02, 0.12), strict=True))),
        ):
            session.add(
                DriftReport(
                    model_name="demo",
                    model_version=2,
                    window_start=now - timedelta(minutes=made + 10),
                    window_end=now - timedelta(minutes=made),
                    feature_stats=drift_stats(psi),
                    drifted=True,
                    created_at=now - timedelta(minutes=made),
                )
            )
        session.add(
            DriftReport(
                model_name="demo",
                model_version=1,
                window_start=now - timedelta(days=3),
                window_end=now - timedelta(days=2),
                feature_stats=drift_stats({"long ago": 0.5}),
                created_at=now - timedelta(days=2),
            )
        )


def report_of(url: str, now: datetime, hours: float = 24) -> str:
    engine = make_engine(url)
    try:
        since = now - timedelta(hours=hours)
        return build_report(engine, since, now, f"{hours:g}h", "sqlite:///test.db", now)
    finally:
        engine.dispose()


def test_every_section_is_drawn_from_its_table(db_url: str) -> None:
    now = utcnow()
    engine = make_engine(db_url)
    fill(engine, now)
    engine.dispose()
    html = report_of(db_url, now + timedelta(seconds=1))
    for key in SECTIONS:
        assert f'<section id="{key}">' in html, key
    for key in PLOTS:
        svg = re.search(rf'<figure class="plot" id="fig-{key}"><svg.*?</svg>', html, re.DOTALL)
        assert svg, f"{key} has no figure"
        assert re.search(r'<g id="data-', svg.group(0)), f"{key} drew no data"
    assert "data-empty" not in html
    assert "demo v2" in html and all(feature in html for feature in FEATURES)
    assert "stale feature" not in html, "an older drift report of v2 was drawn"
    assert "long ago" not in html, "a drift report from before the window was drawn"
    assert "ops-host" in html and "rollback" in html  # the version history's table
    assert "error 23" in html and "invalid 13" in html  # the status totals of the window


def test_the_file_needs_nothing_from_outside(sqlite_url: str) -> None:
    now = utcnow()
    engine = make_engine(sqlite_url)
    fill(engine, now)
    engine.dispose()
    html = report_of(sqlite_url, now + timedelta(seconds=1))
    links = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', html, re.IGNORECASE)
    assert links and all(link.startswith("#") for link in links), links
    namespaces = re.compile(r'\sxmlns(?::\w+)?="[^"]*"')  # names, never fetched
    assert not re.search(r"https?://", namespaces.sub("", html))
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\([^#]", html, re.IGNORECASE)
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "ids repeat across the inline figures"


def test_an_empty_window_says_so_in_every_section(sqlite_url: str) -> None:
    html = report_of(sqlite_url, utcnow(), hours=1)
    assert "<svg" not in html
    for key in SECTIONS:
        assert f'data-empty="{key}"' in html, key
    assert "No drift report was made in this window." in html


def test_old_rows_are_outside_a_short_window(sqlite_url: str) -> None:
    now = utcnow()
    engine = make_engine(sqlite_url)
    fill(engine, now - timedelta(hours=2))
    engine.dispose()
    html = report_of(sqlite_url, now, hours=1)
    assert "<svg" not in html
    assert "The last one before it: demo v1 rollback" in html


def test_buckets_have_a_round_width_and_cover_the_span() -> None:
    first = datetime.fromisoformat("2026-01-01T10:07:13+00:00")
    for span, width in (
        (timedelta(seconds=20), 1),
        (timedelta(hours=1), 60),
        (timedelta(days=7), 3 * 3600),
    ):
        buckets = buckets_for(first, first + span)
        assert buckets.width == timedelta(seconds=width)
        assert buckets.edges[0] <= first and buckets.edges[-1] > first + span
        assert buckets.count <= MAX_BUCKETS
        assert buckets.index(first) == 0 and buckets.index(first + span) == buckets.count - 1


def test_a_percentile_read_from_the_histogram_is_within_its_bin() -> None:
    from collections import Counter

    from scoring.report.queries import LATENCY_CUTS_MS

    def bin_of(ms: float) -> int:
        return sum(cut <= ms for cut in LATENCY_CUTS_MS)

    values = [1.0 + i for i in range(1000)]  # 1 .. 1000 ms
    histogram = Counter(bin_of(v) for v in values)
    for p, exact in ((50, 500.5), (95, 950.0), (99, 990.0)):
        estimate = percentile(histogram, p)
        assert estimate is not None and abs(estimate / exact - 1) < 0.26, (p, estimate)
    assert percentile(Counter(), 50) is None


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCORING_")},
        "SCORING_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
        "COLUMNS": "200",
    }


def test_the_command_writes_the_file_and_refuses_a_bad_duration(
    env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "nested" / "report.html"
    done = run_scoring("report", "--since", "30m", "--out", str(out), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    html = out.read_text()
    assert "last 30m" in html and "No batch or result in this window." in html
    bad = run_scoring("report", "--since", "5 fortnights", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_the_header_names_the_database_without_its_password(
    pg_url: str, env: dict[str, str], tmp_path: Path
) -> None:
    password = make_url(pg_url).password
    assert password, "the test database's URL has no password to hide"
    out = tmp_path / "report.html"
    done = run_scoring(
        "report", "--since", "7d", "--out", str(out), env={**env, "SCORING_DATABASE_URL": pg_url}
    )
    assert done.returncode == 0, done.stderr + done.stdout
    html = out.read_text()
    assert str(password) not in html and MASK in html
    assert make_url(pg_url).database in html
