"""`scoring demo`: the whole job on embedded defaults: SQLite, an in-process broker and worker."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from scoring.cli.common import console, fail


def demo(
    rows: int = typer.Option(100_000, "--rows", min=1, help="Rows to score."),
    database_url: str = typer.Option(
        "sqlite:///./scoring.db", "--database-url", envvar="SCORING_DATABASE_URL"
    ),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train/register the demo model if needed, then score ROWS rows end to end."""
    from scoring.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="scoring-demo-") as tmp:
        summary = run_demo(rows, database_url, Path(tmp), seed, console)
    if summary.lost:
        fail(f"{summary.lost} rows lost", code=1)
