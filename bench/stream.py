"""`scoring bench stream`: the Kafka path's sustained rate and latency, against a baseline.

For the demo classifier (and the MiniLM transformer when its code is installed) it finds the
highest event rate one `scoring stream` worker sustains for a whole window without growing
consumer lag, then measures produce → stored latency at half that rate; the same for a
consumer that handles one message at a time (validate, score, insert, commit), in the
same run, on the same broker and database. Prints JSON; `--out` writes it too.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def command(
    out: Path = typer.Option(None, "--out", help="Also write the JSON report to this file."),
    window_s: float = typer.Option(30.0, "--window-s", help="Seconds a rate must hold."),
    max_windows: int = typer.Option(6, "--max-windows", help="Rate windows tried per arm."),
    models: str = typer.Option("demo,minilm", "--models", help="Models (minilm if installed)."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Run batch-1 arm."),
    torch_threads: int = typer.Option(1, "--torch-threads", help="Threads per worker."),
    text_backend: str = typer.Option(
        "eager", "--text-backend", help="MiniLM's backend (as `promote --auto-backend` sets)."
    ),
    profile: bool = typer.Option(False, "--profile", help="py-spy the stream worker."),
    quick: bool = typer.Option(False, "--quick", help="5 s windows, 2 per arm: development."),
) -> None:
    """Highest sustained Kafka event rate, and latency at half of it, stream vs batch-1."""
    from bench.stream_run import Options, run

    opts = Options(
        window_s=5.0 if quick else window_s,
        max_windows=2 if quick else max_windows,
        models=tuple(m.strip() for m in models.split(",") if m.strip()),
        baseline=baseline,
        torch_threads=torch_threads,
        text_backend=text_backend,
        profile=profile,
        profile_to=out.with_suffix(".pyspy.txt") if (profile and out) else None,
        drain_s=3.0 if quick else 10.0,
    )
    report = run(opts, log=lambda line: typer.echo(line, err=True))
    text = json.dumps(report, indent=2)
    if out:
        out.write_text(text + "\n")
    typer.echo(text)
