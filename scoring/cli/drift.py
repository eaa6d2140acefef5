"""`scoring drift NAME`: PSI and KS per feature and on predicted labels over a window,
accuracy on late ground truth; exits 1 when a threshold is crossed (cron and CI act on it).
The computation is scoring/drift_check.py; this prints it and writes the gauges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from schemas import names
from scoring.cli.common import console, engine, fail, parse_duration, settings


def drift(
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Option(None, "--version", help="Version (default: the active one)."),
    window: str = typer.Option("1h", "--window", help="How far back: 30m, 1h, 7d."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    prom_file: Path = typer.Option(
        None,
        "--prom-file",
        help="Also write the gauges in Prometheus text format (node_exporter textfile).",
    ),
) -> None:
    """Drift of a version's inputs and predictions against its held-out reference."""
    from scoring.drift_check import check
    from workers.runtime.registry import RegistryError, get_version

    span = parse_duration(window)
    db = engine()
    try:
        record = get_version(db, name, version)
        report = check(db, record, span, settings().drift)
    except (RegistryError, ValueError) as exc:
        fail(str(exc))
    if prom_file is not None:
        write_gauges(report, prom_file)
    if as_json:
        console.print_json(json.dumps(report, default=str))
    else:
        console.print(render(report))
    if report["verdict"]["drifted"]:
        raise typer.Exit(names.EXIT_CHECK_FAILED)


def render(report: dict[str, Any]) -> Any:
    from rich.console import Group

    verdict = report["verdict"]
    head = (
        f"[bold]{report['model']} v{report['version']}[/]: {report['rows']} rows scored "
        f"from {report['window_start']:%Y-%m-%d %H:%M} to {report['window_end']:%H:%M} UTC"
    )
    table = Table("feature", "PSI", "KS", "KS p", "drifted", title="inputs vs held-out reference")
    for feature, s in sorted(report["features"].items(), key=lambda kv: -kv[1]["psi"]):
        flag = "[red]yes[/]" if s["drifted"] else "no"
        table.add_row(feature, f"{s['psi']:.4f}", f"{s['ks']:.4f}", f"{s['ks_p']:.2g}", flag)
    parts: list[Any] = [head, table]
    pred = report["prediction"]
    if pred:
        flag = "[red]drifted[/]" if pred["drifted"] else "stable"
        parts.append(
            f"predicted labels: PSI {pred['psi']:.4f} against the {pred['against']} ({flag})"
        )
    acc = report["accuracy"]
    if acc and acc["accuracy"] is not None:
        parts.append(
            f"accuracy on ground truth: {acc['accuracy']:.4f} ({acc['correct']}/{acc['labelled']})"
        )
    else:
        parts.append("accuracy on ground truth: no feedback for this window")
    if verdict["drifted"] is None:
        parts.append(f"[yellow]no verdict: {verdict['why']}[/]")
    elif verdict["drifted"]:
        parts.append("[bold red]DRIFT[/]: a threshold was crossed (exit 1)")
    else:
        parts.append("[green]no drift[/]")
    return Group(*parts)


def write_gauges(report: dict[str, Any], path: Path) -> None:
    """The report as gauges (the same names the workers export), for a textfile collector."""
    from prometheus_client import CollectorRegistry, write_to_textfile

    from workers.hooks.drift_metrics import drift_gauges

    registry = CollectorRegistry()
    drift_gauges(registry, [report])
    write_to_textfile(str(path), registry)
