"""The `scoring` command: one entry point for every job (see `scoring --help`)."""

from __future__ import annotations

import logging

import typer

from scoring.cli import bench, bulk, db, demo, flower, models, stream, worker

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Score data with PyTorch models behind Redis/Celery and Kafka.",
)
app.add_typer(models.app, name="models")
app.add_typer(db.app, name="db")
app.add_typer(bench.app, name="bench")
app.command("bulk")(bulk.bulk)
app.command("demo")(demo.demo)
app.command("worker")(worker.worker)
app.command("flower")(flower.flower)
app.command("status")(bulk.status)
app.command("stream")(stream.stream)
app.command("produce")(stream.produce)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app()


if __name__ == "__main__":
    main()
