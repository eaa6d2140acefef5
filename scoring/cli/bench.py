"""`scoring bench ...`: benchmarks that print ratios against baselines run side by side.

Each benchmark lives in `bench/<name>.py` and exposes a Typer command function named
`command`; heavy imports stay inside it so that `scoring --help` stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, help="Benchmarks (JSON out, ratios vs baselines).")

for _name in ("runtime", "stream", "e2e"):
    try:
        _module = importlib.import_module(f"bench.{_name}")
    except ModuleNotFoundError as exc:  # a benchmark not written yet
        if exc.name != f"bench.{_name}":
            raise
        continue
    app.command(_name)(_module.command)
