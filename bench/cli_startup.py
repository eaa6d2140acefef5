"""`scoring bench cli`: how long `scoring --help` and `scoring <command> --help` take.

Each measurement is a fresh process (what a user, a test or a container start pays),
repeated, and the figure is the median. The target is 1.5 s for each on the 2-core
development machine.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

TARGET_S = 1.5


def command(
    out: Path = typer.Option(Path("bench/results/cli.json"), "--out", help="JSON report."),
    runs: int = typer.Option(7, "--runs", help="Fresh processes per command."),
) -> None:
    """Seconds `scoring --help` and each `scoring <command> --help` take, fresh processes."""
    from bench.machine import cpu_info
    from scoring.cli import COMMANDS

    targets = [[]] + [[name] for name in COMMANDS] + [["bench", "e2e"]]
    rows = [_measure(args, runs) for args in targets]
    report = {
        "benchmark": "cli",
        "machine": cpu_info(),
        "runs": runs,
        "target_s": TARGET_S,
        "rows": rows,
        "slowest_median_s": max(r["median_s"] for r in rows),
        "met": all(r["median_s"] <= TARGET_S for r in rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for r in rows:
        typer.echo(f"{r['command']:<32} median {r['median_s']:.2f}s  max {r['max_s']:.2f}s")
    typer.echo(f"slowest median {report['slowest_median_s']:.2f}s (target {TARGET_S}s)")


def _measure(args: list[str], runs: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "scoring.cli", *args, "--help"]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return {
        "command": " ".join(["scoring", *args, "--help"]),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }
