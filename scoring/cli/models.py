"""`scoring models ...`: register, list, promote and roll back model versions."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from scoring.cli.common import console, engine, fail, settings
from workers import registry
from workers.artifacts import ArtifactError

app = typer.Typer(no_args_is_help=True, help="The model registry.")


@app.command()
def register(
    name: str, directory: Path = typer.Argument(..., exists=True, file_okay=False)
) -> None:
    """Register the artifact in DIRECTORY (model.json + weights.safetensors) as NAME's next
    version. The first version of a name is active at once; later ones are staged."""
    try:
        record = registry.register(engine(), settings().model_store, name, directory)
    except (ArtifactError, ValueError) as exc:
        fail(str(exc))
    console.print(
        f"registered {name} v{record.version} ({record.status}), "
        f"sha256 {record.artifact_sha256[:12]}"
    )


@app.command("list")
def list_(name: str = typer.Argument(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """List versions; --json prints each with its input schema, for building requests."""
    versions = registry.list_versions(engine(), name)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "name": v.name,
                        "version": v.version,
                        "status": v.status,
                        "architecture": v.architecture,
                        "backend": v.backend,
                        "input_schema": v.input_schema,
                        "artifact_sha256": v.artifact_sha256,
                        "max_batch_size": v.max_batch_size,
                        "max_wait_ms": v.max_wait_ms,
                        "created_at": v.created_at.isoformat(),
                        "activated_at": v.activated_at.isoformat() if v.activated_at else None,
                        "validation": (v.validation_report or {}).get("summary"),
                    }
                    for v in versions
                ],
                indent=2,
            )
        )
        return
    table = Table("name", "version", "status", "backend", "inputs", "sha256", "activated")
    for v in versions:
        table.add_row(
            v.name,
            str(v.version),
            v.status,
            v.backend,
            str(len(v.input_schema)),
            v.artifact_sha256[:12],
            v.activated_at.strftime("%Y-%m-%d %H:%M:%S") if v.activated_at else "",
        )
    console.print(table)


@app.command()
def promote(name: str, version: int) -> None:
    """Make VERSION the one new requests for NAME get."""
    try:
        record = registry.promote(engine(), name, version)
    except registry.RegistryError as exc:
        fail(str(exc))
    console.print(f"{name} v{record.version} is active")


@app.command()
def rollback(name: str) -> None:
    """Re-activate the version that was active before the current one."""
    try:
        record = registry.rollback(engine(), name)
    except registry.RegistryError as exc:
        fail(str(exc))
    console.print(f"{name} v{record.version} is active again")
