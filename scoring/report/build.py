"""Putting the report together: each section's query, figure and caption, in page order."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from html import escape
from typing import Any

from sqlalchemy import Engine

from schemas import monitoring
from schemas.tables import utcnow
from scoring.report import figures, queries
from scoring.report.page import Section, empty_panel, figure, page, table

EVENTS_SHOWN = 100


def build_report(
    engine: Engine,
    since: datetime,
    until: datetime,
    window: str,
    database: str,
    made_at: datetime | None = None,
) -> str:
    """The report over [since, until] as one HTML document. `window` names it ("24h");
    `database` is the URL to show, already redacted."""
    span = queries.data_span(engine, since, until)
    buckets = queries.buckets_for(*span) if span else None
    facts = [
        ("Window", f"last {window}: {_at(since)} → {_at(until)} UTC"),
        ("Database", database),
        ("Made", f"{_at(made_at or utcnow())} UTC"),
        ("Time buckets", _bucket_fact(buckets)),
    ]
    sections = [
        _over_time(_throughput, "throughput", engine, buckets),
        _over_time(_latency, "latency", engine, buckets),
        _batch_sizes(engine, since, until),
        _over_time(_statuses, "statuses", engine, buckets),
        _drift(engine, since),
        _accuracy(engine, since),
        _history(engine, since, until),
    ]
    return page("Scoring report", facts, sections)


def _at(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")


def _bucket_fact(buckets: queries.Buckets | None) -> str:
    if buckets is None:
        return "none: no batch or result in the window"
    return (
        f"{_duration(buckets.width)} each, {buckets.count} from the window's first batch or "
        f"result to its last ({_at(buckets.edges[0])} → {_at(buckets.edges[-1])})"
    )


def _duration(width: timedelta) -> str:
    seconds = int(width.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


TITLES = {
    "throughput": "Throughput by source",
    "latency": "Latency percentiles",
    "statuses": "Errors and other failed rows",
}


def _over_time(
    part: Callable[[Engine, queries.Buckets], Section],
    key: str,
    engine: Engine,
    buckets: queries.Buckets | None,
) -> Section:
    """A plot over time, or its empty state when the window has no batch and no result."""
    if buckets is None:
        return Section(key, TITLES[key], empty_panel(key, "No batch or result in this window."))
    return part(engine, buckets)


def _throughput(engine: Engine, buckets: queries.Buckets) -> Section:
    key, title = "throughput", TITLES["throughput"]
    svg = figures.throughput_figure(buckets, queries.throughput(engine, buckets))
    caption = (
        f"Requests scored per second in each {_duration(buckets.width)} bucket, stacked by "
        "source, from the source mix of every micro-batch (<code>batch_metrics</code>)."
    )
    return Section(key, title, figure(key, svg, caption))


def _latency(engine: Engine, buckets: queries.Buckets) -> Section:
    key, title = "latency", TITLES["latency"]
    svg = figures.latency_figure(buckets, queries.latency_percentiles(engine, buckets))
    caption = (
        "p50, p95 and p99 per bucket of each scored request's <code>queue_ms + "
        "inference_ms</code> (<code>score_results</code>: enqueued → model call → done), all "
        "sources together; rows without timings are left out. Counted in SQL into ten "
        "log-spaced bins a decade, so a percentile is exact to within its bin (about 12%)."
    )
    return Section(key, title, figure(key, svg, caption))


def _batch_sizes(engine: Engine, since: datetime, until: datetime) -> Section:
    key, title = "batch-sizes", "Micro-batch sizes"
    sizes = queries.batch_sizes(engine, since, until)
    if not sizes:
        return Section(key, title, empty_panel(key, "No micro-batch in this window."))
    batches = sum(n for _, n in sizes)
    mean = sum(s * n for s, n in sizes) / batches
    middle = _weighted_median(sizes)
    caption = (
        f"{batches:,} micro-batches (<code>batch_metrics.batch_size</code>): median {middle:,}, "
        f"mean {mean:.1f}, largest {max(s for s, _ in sizes):,} requests."
    )
    return Section(key, title, figure(key, figures.batch_size_figure(sizes), caption))


def _weighted_median(counts: list[tuple[int, int]]) -> int:
    """The median of values given as sorted (value, how many) pairs."""
    half, seen = sum(n for _, n in counts) / 2, 0
    for value, n in counts:
        seen += n
        if seen >= half:
            return value
    return counts[-1][0]


def _statuses(engine: Engine, buckets: queries.Buckets) -> Section:
    key, title = "statuses", TITLES["statuses"]
    counts = queries.status_counts(engine, buckets)
    totals = ", ".join(f"{escape(s)} {sum(c):,}" for s, c in counts.items())
    caption = (
        f"Share of the <code>score_results</code> rows of each bucket that failed, by status "
        f"(stacked bars), and the rows scored (grey line); in the window: {totals}. Dead "
        "letters (not JSON, unknown model, bad envelope) never reach the database: they "
        "wait on the Redis dead-letter queue and the Kafka dead-letter topic, counted by "
        "<code>scoring status</code> and the <code>scoring_dead_letters_total</code> metric."
    )
    return Section(key, title, figure(key, figures.status_figure(buckets, counts), caption))


def _drift(engine: Engine, since: datetime) -> Section:
    key, title = "drift", "Drift per feature"
    reports = queries.latest_drift(engine, since)
    if not reports:
        return Section(key, title, empty_panel(key, "No drift report was made in this window."))
    parts = []
    for n, report in enumerate(reports):
        name = f"{report.model} v{report.version}"
        svg = figures.drift_figure(report, f"{n}")
        parts.append(f"<h3>{escape(name)}</h3>")
        parts.append(
            figure(f"drift-{n}", svg, _drift_caption(report), "The report has no features.")
        )
    return Section(key, title, "".join(parts))


def _drift_caption(report: queries.Drift) -> str:
    verdict = "<strong>drifted</strong>" if report.drifted else "not drifted"
    if report.drifted is None:
        verdict = f"no verdict ({escape(report.no_verdict or 'too few rows')})"
    rows = f"{report.rows:,} rows" if isinstance(report.rows, int) else "rows unknown"
    accuracy = report.accuracy or {}
    labelled = (
        f"; {accuracy['correct']:,} of {accuracy['labelled']:,} labelled rows correct"
        if accuracy.get("labelled")
        else ""
    )
    return (
        f"The latest report ({_at(report.created_at)} UTC) over {_at(report.window_start)} → "
        f"{_at(report.window_end)}, {rows}: {verdict}{labelled}. Red: drifted, by PSI or by "
        f"the Kolmogorov-Smirnov test. {_features_left_out(report)}"
    )


def _features_left_out(report: queries.Drift) -> str:
    """What the figure leaves out: the features past the highest-PSI ones."""
    rest = report.features[figures.MAX_DRIFT_FEATURES :]
    if not rest:
        return f"All {len(report.features)} features, highest PSI first."
    drifted = [name for name, _, flag in rest if flag]
    among = f"; drifted among them: {escape(', '.join(drifted))}" if drifted else ""
    return (
        f"The {figures.MAX_DRIFT_FEATURES} features of highest PSI; the other {len(rest)} "
        f"have a PSI of at most {rest[0][1]:.3f}{among}."
    )


def _accuracy(engine: Engine, since: datetime) -> Section:
    key, title = "accuracy", "Accuracy per version"
    rows: list[dict[str, Any]] = monitoring.accuracy_by_version(engine, since)
    unlabelled = [f"{r['model']} v{r['version']}" for r in rows if not r.get("labelled")]
    caption = (
        "Rows scored in the window whose request got a ground-truth label (the "
        "<code>feedback</code> table joined to <code>score_results.outputs.label</code>): "
        "accuracy and correct/labelled per version."
    )
    if unlabelled:
        caption += f" No labels yet for {escape(', '.join(unlabelled))}."
    empty = "No feedback labels for rows scored in this window."
    return Section(key, title, figure(key, figures.accuracy_figure(rows), caption, empty))


def _history(engine: Engine, since: datetime, until: datetime) -> Section:
    key, title = "history", "Version history"
    events, total = queries.model_events(engine, since, until, EVENTS_SHOWN)
    if not events:
        before = queries.last_event_before(engine, since)
        message = "No model events in this window."
        if before:
            message += (
                f" The last one before it: {before['name']} v{before['version']} "
                f"{before['action']} at {_at(before['at'])} UTC."
            )
        return Section(key, title, empty_panel(key, message))
    caption = (
        f"{total:,} registry changes in the window (<code>model_events</code>), one row per "
        f"model; the table lists the newest {len(events)}."
    )
    columns = ("at (UTC)", "model", "version", "action", "previous", "host", "user")
    rows = [
        (_at(e["at"]), e["name"], e["version"], e["action"], e["previous_version"], e["host"])
        + (e["username"],)
        for e in events
    ]
    body = figure(key, figures.events_figure(events), caption) + table(columns, rows)
    return Section(key, title, body)
