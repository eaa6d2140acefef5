"""The report's plots: matplotlib figures rendered to inline SVG strings.

Figures are made as `matplotlib.figure.Figure` objects, never through pyplot, so no GUI
backend is ever touched and no global figure state is kept (SVG needs no Agg either).
Text stays text (`svg.fonttype: none`): small files, selectable labels, no glyph ids
shared between the figures of one page. Every artist that draws data gets a gid starting
with `data-`, so a browser test can tell a plot that drew from an empty axis.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import matplotlib
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from scoring.report.queries import Buckets, Drift

PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]
STATUS_COLORS = {"error": "#c44e52", "invalid": "#dd8452", "expired": "#8172b3"}
STYLE: dict[Any, Any] = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "legend.fontsize": 8,
}
WIDE = (10.0, 3.0)
MAX_DRIFT_FEATURES = 15


@contextmanager
def _figure(size: tuple[float, float] = WIDE) -> Iterator[Figure]:
    with matplotlib.rc_context(STYLE):
        yield Figure(figsize=size, layout="constrained")


def to_svg(fig: Figure, key: str) -> str:
    """The figure as an <svg> element to inline: no XML prolog, doctype or metadata, and
    matplotlib's group ids (`axes_1`, `patch_2`: the same in every figure) prefixed with
    `key`, so that no id repeats in the page."""
    with matplotlib.rc_context(STYLE):
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    return re.sub(r'\bid="([A-Za-z0-9.]+_\d+)"', rf'id="{key}-\1"', text)


def _mark(artists: Any, key: str) -> None:
    """Give each data artist a unique gid `data-<key>-<n>` (the group's id in the SVG)."""
    for n, artist in enumerate(artists):
        artist.set_gid(f"data-{key}-{n}")


def _legend_above(ax: Axes, handles: Any = None, labels: Any = None) -> None:
    """The legend in one row over the axes, where it hides no data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=len(handles))


def _time_axis(ax: Axes, start: datetime, end: datetime) -> None:
    locator = AutoDateLocator(minticks=4, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlim(float(date2num(start)), float(date2num(end)))
    ax.set_xlabel("UTC")


def _dates(times: Sequence[datetime]) -> Any:
    """matplotlib's date numbers (days) for aware datetimes: what its axes take."""
    return date2num(list(times))


def _days(width: timedelta) -> float:
    return width.total_seconds() / 86400


def _middles(buckets: Buckets) -> Any:
    return _dates([at + buckets.width / 2 for at in buckets.edges[:-1]])


def throughput_figure(buckets: Buckets, per_source: dict[str, list[int]]) -> str | None:
    """Requests/s per source, stacked, one step per bucket."""
    if not any(any(v) for v in per_source.values()):
        return None
    seconds = buckets.width.total_seconds()
    rates = [[n / seconds for n in counts] for counts in per_source.values()]
    with _figure() as fig:
        ax = fig.subplots()
        layers = ax.stackplot(
            _dates(buckets.edges),
            *[r + r[-1:] for r in rates],
            labels=[f"{s} ({sum(c):,} requests)" for s, c in per_source.items()],
            step="post",
            alpha=0.85,
        )
        _mark(layers, "throughput")
        ax.set_ylabel("requests/s")
        _legend_above(ax)
        _time_axis(ax, buckets.edges[0], buckets.edges[-1])
        return to_svg(fig, "throughput")


def latency_figure(buckets: Buckets, percentiles: dict[int, list[float | None]]) -> str | None:
    """p50/p95/p99 per bucket on a log axis (ms)."""
    if not any(v is not None for series in percentiles.values() for v in series):
        return None
    x = _middles(buckets)
    with _figure() as fig:
        ax = fig.subplots()
        for p, series in percentiles.items():
            y = [math.nan if v is None else v for v in series]
            _mark(ax.plot(x, y, marker="o", markersize=3, label=f"p{p}"), f"latency-p{p}")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("queue + inference, ms")
        _legend_above(ax)
        _time_axis(ax, buckets.edges[0], buckets.edges[-1])
        return to_svg(fig, "latency")


def batch_size_figure(sizes: Sequence[tuple[int, int]]) -> str | None:
    """Micro-batches per size: one bar per size over a range of up to 80 sizes, else 40 bins."""
    if not sizes:
        return None
    smallest, largest = sizes[0][0], sizes[-1][0]
    one_each = largest - smallest <= 80
    bins: Any = [s - 0.5 for s in range(smallest, largest + 2)] if one_each else 40
    with _figure((10.0, 2.8)) as fig:
        ax = fig.subplots()
        values, weights = zip(*sizes, strict=True)
        _, _, bars = ax.hist(values, bins=bins, weights=weights, color=PALETTE[0])
        _mark(bars, "batch-sizes")
        ax.set_xlabel("requests per micro-batch")
        ax.set_ylabel("micro-batches")
        return to_svg(fig, "batch-sizes")


def status_figure(buckets: Buckets, counts: dict[str, list[int]]) -> str | None:
    """Per bucket, the share of the rows of each failed status (stacked bars, left axis)
    and the rows scored (grey line, right axis)."""
    if not counts:
        return None
    totals = [sum(column) for column in zip(*counts.values(), strict=True)]
    failing = {s: counts.get(s, [0] * buckets.count) for s in STATUS_COLORS}
    failing |= {s: c for s, c in counts.items() if s not in failing and s != "ok"}
    x, width = _middles(buckets), _days(buckets.width) * 0.8
    with _figure() as fig:
        ax = fig.subplots()
        bottom = [0.0] * buckets.count
        for status, series in failing.items():
            share = [100 * n / t if t else 0.0 for n, t in zip(series, totals, strict=True)]
            label = f"{status}: {sum(series):,} of {sum(totals):,} rows"
            color = STATUS_COLORS.get(status, PALETTE[5])
            _mark(
                ax.bar(x, share, width, bottom=bottom, color=color, label=label), f"status-{status}"
            )
            bottom = [b + v for b, v in zip(bottom, share, strict=True)]
        ax.set_ylabel("% of the rows scored")
        ax.set_ylim(0, max(max(bottom) * 1.15, 1.0))
        _rows_scored(ax, x, totals)
        _time_axis(ax, buckets.edges[0], buckets.edges[-1])
        return to_svg(fig, "statuses")


def _rows_scored(ax: Axes, x: Any, totals: list[int]) -> None:
    """The rows scored per bucket, on a right-hand axis, and one legend for both axes."""
    right = ax.twinx()
    _mark(right.plot(x, totals, color="#8c8c8c", linewidth=1.2, label="rows scored"), "status-rows")
    right.set_ylabel("rows scored per bucket", color="#6f6f6f")
    right.set_ylim(0, max(max(totals) * 1.15, 1))
    right.grid(False)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    _legend_above(right, handles + more_handles, labels + more_labels)


def drift_figure(report: Drift, key: str) -> str | None:
    """PSI of the prediction and of the features with the highest PSI (drifted ones red:
    by PSI or by the KS test), each bar labelled, with the threshold the report was
    judged with."""
    shown = report.features[:MAX_DRIFT_FEATURES]
    if report.prediction is not None:
        shown = [("(prediction)", *report.prediction), *shown]
    if not shown:
        return None
    names, psi, drifted = (list(column) for column in zip(*shown, strict=True))
    with _figure((10.0, 0.2 * len(names) + 1.1)) as fig:
        ax = fig.subplots()
        colors = [STATUS_COLORS["error"] if d else PALETTE[0] for d in drifted]
        bars = ax.barh(range(len(names)), psi, color=colors, height=0.7)
        _mark(bars, f"drift-{key}")
        ax.bar_label(bars, [f"{v:.3f}" for v in psi], padding=2, fontsize=7)
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        legend: list[Any] = [
            Patch(color=PALETTE[0], label="not drifted"),
            Patch(color=STATUS_COLORS["error"], label="drifted (PSI or KS)"),
        ]
        if report.psi_threshold is not None:
            ax.axvline(report.psi_threshold, color="#333333", linestyle="--", linewidth=1)
            threshold = f"PSI threshold {report.psi_threshold:g}"
            legend.append(Line2D([], [], color="#333333", linestyle="--", label=threshold))
        ax.set_xlim(0, max([*psi, report.psi_threshold or 0.0, 0.01]) * 1.12)
        _legend_above(ax, legend, [h.get_label() for h in legend])
        ax.set_xlabel("PSI (population stability index)")
        return to_svg(fig, f"drift-{key}")


def accuracy_figure(rows: Sequence[dict[str, Any]]) -> str | None:
    """Accuracy per version that has labels, with correct/labelled over each bar."""
    labelled = [r for r in rows if r.get("labelled") and r.get("accuracy") is not None]
    if not labelled:
        return None
    names = [f"{r['model']} v{r['version']}" for r in labelled]
    values = [100 * float(r["accuracy"]) for r in labelled]
    with _figure((max(4.0, 1.1 * len(names) + 2.0), 3.0)) as fig:
        ax = fig.subplots()
        bars = ax.bar(names, values, color=PALETTE[2], width=0.6)
        _mark(bars, "accuracy")
        notes = [
            f"{v:.1f}%\n{r['correct']:,}/{r['labelled']:,}"
            for v, r in zip(values, labelled, strict=True)
        ]
        ax.bar_label(bars, notes, padding=2, fontsize=8)
        ax.set_ylim(0, 118)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("accuracy, %")
        ax.grid(axis="x", visible=False)
        return to_svg(fig, "accuracy")


EVENT_MARKERS = {
    "register": ("o", PALETTE[0]),
    "validate": ("s", "#999999"),
    "promote": ("^", PALETTE[2]),
    "rollback": ("v", PALETTE[3]),
}


def _action_order(action: str) -> tuple[int, str]:
    """register, validate, promote, rollback, then the others: promotions drawn on top."""
    known = list(EVENT_MARKERS)
    return (known.index(action) if action in known else len(known), action)


def events_figure(events: Sequence[dict[str, Any]]) -> str | None:
    """The registry's changes on a timeline, one row per model, a marker per action."""
    if not events:
        return None
    models = sorted({e["name"] for e in events})
    first, last = min(e["at"] for e in events), max(e["at"] for e in events)
    pad = max((last - first) * 0.05, timedelta(seconds=30))
    with _figure((10.0, 1.2 + 0.45 * len(models))) as fig:
        ax = fig.subplots()
        actions = sorted({e["action"] for e in events}, key=_action_order)
        for action in actions:
            mine = [e for e in events if e["action"] == action]
            marker, color = EVENT_MARKERS.get(action, ("D", PALETTE[4]))
            ys = [models.index(e["name"]) for e in mine]
            dots = ax.scatter(_dates([e["at"] for e in mine]), ys, marker=marker, color=color, s=40)
            dots.set_label(action)
            _mark([dots], f"events-{action}")
        _label_versions(ax, events, models)
        ax.set_yticks(range(len(models)), models)
        ax.set_ylim(-0.7, len(models) - 0.3)
        ax.grid(axis="y", visible=False)
        _legend_above(ax)
        _time_axis(ax, first - pad, last + pad)
        return to_svg(fig, "events")


def _label_versions(ax: Axes, events: Sequence[dict[str, Any]], models: list[str]) -> None:
    """v<N> next to promotions and rollbacks (next to every event when there are few),
    at three heights in turn so that neighbours do not overprint; a label the same model
    just got (register then promote, a second apart) is not repeated."""
    shown = [e for e in events if len(events) <= 30 or e["action"] in ("promote", "rollback")]
    shown.sort(key=lambda e: e["at"])
    close = max((shown[-1]["at"] - shown[0]["at"]) / 50, timedelta(seconds=1))
    last: dict[str, tuple[str, datetime]] = {}
    drawn = 0
    for event in shown:
        text, name = f"v{event['version']}", event["name"]
        if name in last and last[name][0] == text and event["at"] - last[name][1] < close:
            continue
        last[name] = (text, event["at"])
        ax.annotate(
            text,
            (float(date2num(event["at"])), models.index(name)),
            xytext=(0, (8, 16, -14)[drawn % 3]),
            textcoords="offset points",
            ha="center",
            fontsize=7,
        )
        drawn += 1
