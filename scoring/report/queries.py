"""What the report shows, read from the database in bounded memory and portable SQL.

score_results can hold millions of rows, so it is only ever aggregated in SQL (GROUP BY a
time bucket and a status or a latency bin, never a row fetched); batch_metrics (one row
per micro-batch) is streamed and folded into buckets in Python, since its `source_mix`
JSON has no portable SQL. Buckets and bins are nested CASE expressions over bound edges,
which SQLite and PostgreSQL both run the same way (no dialect's date or log functions).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, case, func, literal_column, select

from schemas import monitoring, names
from schemas.tables import BatchMetric, ModelEvent, ScoreResult, table_of

# Bucket widths (seconds) to choose from: the smallest that gives at most MAX_BUCKETS.
WIDTHS_S: tuple[int, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
WIDTHS_S += (2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 72  # 30m in 30 s buckets, 1h in minutes, 24h in half hours, 7d in 3 hours
# Latency histogram: bin i holds [0.1·10^((i-1)/10), 0.1·10^(i/10)) ms, ten bins a decade
# from 0.1 ms to 1,000 s; a percentile read from it is within a bin (about 12%).
BINS_PER_DECADE = 10
LATENCY_CUTS_MS = tuple(0.1 * 10 ** (k / BINS_PER_DECADE) for k in range(71))
PERCENTILES = (50, 95, 99)
KNOWN_STATUSES = (names.STATUS_OK, names.STATUS_ERROR, names.STATUS_INVALID, names.STATUS_EXPIRED)


def aware(at: datetime) -> datetime:
    """SQLite hands timestamps back naive; every one of them is UTC."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Buckets:
    """The time axis of the plots over time: bucket i runs from edges[i] to edges[i + 1]."""

    edges: tuple[datetime, ...]
    width: timedelta

    @property
    def count(self) -> int:
        return len(self.edges) - 1

    def index(self, at: datetime) -> int | None:
        i = bisect_right(self.edges, aware(at)) - 1
        return i if 0 <= i < self.count else None

    def holds(self, column: Any) -> ColumnElement[bool]:
        return and_(column >= self.edges[0], column < self.edges[-1])


def buckets_for(first: datetime, last: datetime) -> Buckets:
    """Buckets of a round width, aligned to it, over [first, last]: the narrowest width
    that needs at most MAX_BUCKETS (the widest one for a longer span)."""
    for width in WIDTHS_S:
        start = first.timestamp() // width * width
        count = int((last.timestamp() - start) // width) + 1
        if count <= MAX_BUCKETS:
            break
    edges = tuple(datetime.fromtimestamp(start + i * width, UTC) for i in range(count + 1))
    return Buckets(edges, timedelta(seconds=width))


def bin_index(value: Any, cuts: Sequence[Any], offset: int = 0) -> ColumnElement[Any]:
    """SQL for how many of the sorted `cuts` are <= `value`: a balanced nested CASE, so
    each row costs log2(len(cuts)) comparisons."""
    if not cuts:
        return literal_column(str(offset))
    mid = len(cuts) // 2
    return case(
        (value < cuts[mid], bin_index(value, cuts[:mid], offset)),
        else_=bin_index(value, cuts[mid + 1 :], offset + mid + 1),
    )


def data_span(engine: Engine, since: datetime, until: datetime) -> tuple[datetime, datetime] | None:
    """The first and last batch or result in the window: the plots over time span these."""
    found: list[datetime] = []
    with engine.connect() as conn:
        for column in (table_of(BatchMetric).c.created_at, table_of(ScoreResult).c.scored_at):
            row = conn.execute(
                select(func.min(column), func.max(column)).where(column >= since, column <= until)
            ).one()
            found += [aware(at) for at in row if at is not None]
    return (min(found), max(found)) if found else None


def throughput(engine: Engine, buckets: Buckets) -> dict[str, list[int]]:
    """Requests scored per bucket and source, from each micro-batch's source mix."""
    table = table_of(BatchMetric)
    per_source: dict[str, list[int]] = defaultdict(lambda: [0] * buckets.count)
    query = select(table.c.created_at, table.c.source_mix).where(buckets.holds(table.c.created_at))
    with engine.connect() as conn:
        for created_at, mix in conn.execution_options(yield_per=5000).execute(query):
            i = buckets.index(created_at)
            if i is None:
                continue
            for source, n in (mix or {}).items():
                per_source[str(source)][i] += int(n)
    return dict(sorted(per_source.items()))


def batch_sizes(engine: Engine, since: datetime, until: datetime) -> list[tuple[int, int]]:
    """(batch size, micro-batches of that size) in the window."""
    table = table_of(BatchMetric)
    query = (
        select(table.c.batch_size, func.count())
        .where(table.c.created_at >= since, table.c.created_at <= until)
        .group_by(table.c.batch_size)
        .order_by(table.c.batch_size)
    )
    with engine.connect() as conn:
        return [(int(size), int(n)) for size, n in conn.execute(query)]


def latency_percentiles(engine: Engine, buckets: Buckets) -> dict[int, list[float | None]]:
    """p50/p95/p99 of queue_ms + inference_ms per bucket, read from a histogram that SQL
    counts (time bucket × latency bin): bounded by buckets × bins, whatever the rows."""
    table = table_of(ScoreResult)
    total_ms = table.c.queue_ms + table.c.inference_ms
    binned = (
        select(
            bin_index(table.c.scored_at, buckets.edges[1:-1]).label("bucket"),
            bin_index(total_ms, LATENCY_CUTS_MS).label("bin"),
        )
        .where(
            buckets.holds(table.c.scored_at),
            table.c.queue_ms.is_not(None),
            table.c.inference_ms.is_not(None),
        )
        .subquery()
    )
    query = select(binned.c.bucket, binned.c.bin, func.count()).group_by(
        binned.c.bucket, binned.c.bin
    )
    histograms: list[Counter[int]] = [Counter() for _ in range(buckets.count)]
    with engine.connect() as conn:
        for bucket, latency_bin, n in conn.execute(query):
            histograms[int(bucket)][int(latency_bin)] += int(n)
    return {p: [percentile(h, p) for h in histograms] for p in PERCENTILES}


def percentile(histogram: Counter[int], p: float) -> float | None:
    """The p-th percentile (ms) of a latency histogram, interpolated geometrically in its bin."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = p / 100 * total, 0
    for latency_bin in sorted(histogram):
        n = histogram[latency_bin]
        if seen + n >= rank:
            low = LATENCY_CUTS_MS[0] * 10 ** ((latency_bin - 1) / BINS_PER_DECADE)
            return float(low * 10 ** (((rank - seen) / n) / BINS_PER_DECADE))
        seen += n
    return None  # unreachable: the last bin reaches the total


def status_counts(engine: Engine, buckets: Buckets) -> dict[str, list[int]]:
    """score_results rows per bucket and status (every status found, the known ones first)."""
    table = table_of(ScoreResult)
    binned = (
        select(bin_index(table.c.scored_at, buckets.edges[1:-1]).label("bucket"), table.c.status)
        .where(buckets.holds(table.c.scored_at))
        .subquery()
    )
    query = select(binned.c.bucket, binned.c.status, func.count()).group_by(
        binned.c.bucket, binned.c.status
    )
    counts: dict[str, list[int]] = {}
    with engine.connect() as conn:
        for bucket, status, n in conn.execute(query):
            counts.setdefault(str(status), [0] * buckets.count)[int(bucket)] += int(n)
    order = [s for s in KNOWN_STATUSES if s in counts] + sorted(set(counts) - set(KNOWN_STATUSES))
    return {s: counts[s] for s in order}


@dataclass(frozen=True)
class Drift:
    """The latest drift report of one model version in the window."""

    model: str
    version: int
    window_start: datetime
    window_end: datetime
    created_at: datetime
    drifted: bool | None  # None: too few rows for a verdict (`no_verdict` says why)
    no_verdict: str | None
    rows: int | None
    features: list[tuple[str, float, bool]]  # (feature, PSI, drifted), highest PSI first
    prediction: tuple[float, bool] | None  # the prediction's (PSI, drifted)
    psi_threshold: float | None
    accuracy: dict[str, Any] | None


def latest_drift(engine: Engine, since: datetime) -> list[Drift]:
    """The newest drift report of each (model, version) made in the window."""
    reports = [_drift(r) for r in monitoring.latest_drift(engine, since)]
    return sorted(reports, key=lambda d: (d.model, d.version))


def _drift(row: dict[str, Any]) -> Drift:
    stats: dict[str, Any] = row["stats"] or {}
    features = [
        (str(name), float(f.get("psi") or 0.0), bool(f.get("drifted")))
        for name, f in (stats.get("features") or {}).items()
    ]
    prediction = stats.get("prediction")
    verdict: dict[str, Any] = stats["verdict"] if isinstance(stats.get("verdict"), dict) else {}
    undecided = "drifted" in verdict and verdict["drifted"] is None  # too few rows
    return Drift(
        model=row["model"],
        version=int(row["version"]),
        window_start=aware(row["window_start"]),
        window_end=aware(row["window_end"]),
        created_at=aware(row["created_at"]),
        drifted=None if undecided else bool(row["drifted"]),
        no_verdict=verdict.get("why") if undecided else None,
        rows=stats.get("rows"),
        features=sorted(features, key=lambda f: -f[1]),
        prediction=(
            (float(prediction.get("psi") or 0.0), bool(prediction.get("drifted")))
            if isinstance(prediction, dict)
            else None
        ),
        psi_threshold=psi_threshold(stats.get("thresholds")),
        accuracy=stats.get("accuracy"),
    )


def psi_threshold(thresholds: Any) -> float | None:
    """The PSI threshold a report was judged with (`psi_threshold`, as `scoring drift`
    records its DriftSettings), else the first key naming PSI."""
    if not isinstance(thresholds, dict):
        return None
    keys = ["psi_threshold"] + sorted(k for k in thresholds if "psi" in str(k).lower())
    for key in keys:
        value = thresholds.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


EVENT_COLUMNS = ("at", "name", "version", "action", "previous_version", "host", "username")


def model_events(
    engine: Engine, since: datetime, until: datetime, limit: int = 200
) -> tuple[list[dict[str, Any]], int]:
    """The newest `limit` model_events rows of the window (newest first), and how many
    the window holds."""
    table = table_of(ModelEvent)
    in_window = and_(table.c.at >= since, table.c.at <= until)
    query = (
        select(*(table.c[c] for c in EVENT_COLUMNS))
        .where(in_window)
        .order_by(table.c.at.desc(), table.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        total = int(conn.scalar(select(func.count()).select_from(table).where(in_window)) or 0)
        rows = [dict(r) for r in conn.execute(query).mappings()]
    for row in rows:
        row["at"] = aware(row["at"])
    return rows, total


def last_event_before(engine: Engine, since: datetime) -> dict[str, Any] | None:
    """The newest model_events row older than the window (for an empty history)."""
    table = table_of(ModelEvent)
    query = (
        select(*(table.c[c] for c in EVENT_COLUMNS))
        .where(table.c.at < since)
        .order_by(table.c.at.desc(), table.c.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return {**row, "at": aware(row["at"])} if row else None
