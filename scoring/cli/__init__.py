"""The `scoring` command: one entry point for every job (see `scoring --help`).

Commands are imported only when they run (scoring/cli/lazy.py). Expected failures (a
database not migrated, a broker that does not answer, an unknown model) print one line
that says what to do and exit 2; `scoring --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import logging
from typing import Any

import typer

from scoring.cli.lazy import Lazy, LazyGroup

COMMANDS: dict[str, Lazy] = {
    "demo": Lazy(
        "scoring.cli.demo:demo",
        "Train/register the demo model if needed, then score ROWS rows end to end.",
    ),
    "db": Lazy("scoring.cli.db:app", "Database schema."),
    "models": Lazy("scoring.cli.models:app", "The model registry."),
    "bulk": Lazy(
        "scoring.cli.bulk:bulk",
        "Stream FILE (or a query's rows) into chunked requests on Redis and record a bulk run.",
    ),
    "produce": Lazy(
        "scoring.cli.produce:produce", "Validate JSON-lines requests and publish them."
    ),
    "worker": Lazy(
        "scoring.cli.worker:worker",
        "Score requests from Redis (and Kafka with --kafka) in micro-batches.",
    ),
    "stream": Lazy(
        "scoring.cli.stream:stream",
        "Score requests from Kafka as one consumer of a group.",
    ),
    "flower": Lazy(
        "scoring.cli.flower:flower",
        "Watch queues and workers in Flower (basic auth from SCORING_FLOWER_AUTH).",
    ),
    "status": Lazy(
        "scoring.cli.status:status",
        "Queues, Kafka lag, workers, model versions, recent traffic and bulk runs.",
    ),
    "drift": Lazy(
        "scoring.cli.drift:drift",
        "Drift of a version's inputs and predictions against its held-out reference.",
    ),
    "feedback": Lazy(
        "scoring.cli.feedback:feedback",
        "Store ground-truth labels (request_id, label) for results scored earlier.",
    ),
    "bench": Lazy("scoring.cli.bench:app", "Benchmarks (JSON out, ratios vs baselines)."),
    "report": Lazy(
        "scoring.cli.report:report",
        "Write plots of the last --since to one self-contained HTML file.",
    ),
}


class ScoringGroup(LazyGroup):
    """The root group: turns expected failures into one line and exit 2."""

    lazy = COMMANDS

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            from schemas.failures import explain
            from scoring.cli import common

            message = explain(exc, common.current_settings())
            if message is None:
                raise
            common.err_console.print(f"[bold red]error:[/] {message}", highlight=False)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=ScoringGroup,
    name="scoring",
    help="Score data with PyTorch models behind Redis/Celery and Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of expected errors."),
) -> None:
    ctx.obj = {"debug": debug}


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app(prog_name="scoring")


if __name__ == "__main__":
    main()
