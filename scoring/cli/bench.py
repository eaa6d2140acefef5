"""`scoring bench ...`: benchmarks that print ratios against baselines run side by side.

Each benchmark lives in `bench/<name>.py` and exposes a Typer command function named
`command`, imported only when that benchmark runs.
"""

from __future__ import annotations

import typer

from scoring.cli.lazy import Lazy, lazy_group

BENCHMARKS = {
    "runtime": Lazy(
        "bench.runtime:command",
        "Measure the model runtime; write every row and the headline ratios to OUT.",
    ),
    "stream": Lazy(
        "bench.stream:command",
        "Highest sustained Kafka event rate, and latency at half of it, stream vs batch-1.",
    ),
    "e2e": Lazy(
        "bench.e2e:command",
        "End to end: bulk through Redis, workers and PostgreSQL vs the runtime and baselines.",
    ),
    "chaos": Lazy(
        "bench.chaos:command",
        "SIGKILL workers at random instants during a bulk run; count lost and doubled rows.",
    ),
    "soak": Lazy(
        "bench.soak:command",
        "Minutes of Kafka and Redis load with worker SIGKILLs and a Redis restart; counts.",
    ),
    "switch": Lazy(
        "bench.switch:command",
        "p99 latency across a promotion vs before it (warm-up off vs on the scorer thread).",
    ),
    "cli": Lazy(
        "bench.cli_startup:command",
        "Seconds `scoring --help` and each `scoring <command> --help` take, fresh processes.",
    ),
}

app = typer.Typer(
    cls=lazy_group(BENCHMARKS),
    help="Benchmarks (JSON out, ratios vs baselines).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@app.callback()
def _bench() -> None:
    """Benchmarks (JSON out, ratios vs baselines)."""
