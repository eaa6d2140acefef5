"""`scoring models ...`: register, list, promote and roll back model versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from scoring.cli.common import console, engine, fail, settings

app = typer.Typer(
    no_args_is_help=True, help="The model registry.", add_completion=False, rich_markup_mode=None
)


@app.command()
def register(
    name: str, directory: Path = typer.Argument(..., exists=True, file_okay=False)
) -> None:
    """Register the artifact in DIRECTORY (model.json + weights.safetensors) as NAME's next
    version. The first version of a name is active at once; later ones are staged."""
    from workers.runtime import registry
    from workers.runtime.artifacts import ArtifactError

    try:
        record = registry.register(engine(), settings().runtime.model_store, name, directory)
    except (ArtifactError, ValueError) as exc:
        fail(str(exc))
    console.print(
        f"registered {name} v{record.version} ({record.status}), "
        f"sha256 {record.artifact_sha256[:12]}"
    )


@app.command("list")
def list_(name: str = typer.Argument(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """List versions; --json prints each with its input schema, for building requests."""
    from workers.runtime import registry

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
def promote(
    name: str,
    version: int,
    force: bool = typer.Option(False, "--force", help="Promote even if the gate failed."),
    auto_backend: bool = typer.Option(
        False, "--auto-backend", help="Adopt the backend `validate` recommended first."
    ),
) -> None:
    """Make VERSION the one new requests for NAME get (it must pass the quality gate)."""
    from workers.runtime import registry

    db = engine()
    try:
        record = registry.get_version(db, name, version)
        if auto_backend:
            chosen = (record.validation_report or {}).get("recommended")
            if not chosen:
                fail(f"no recommended backend: run `scoring models validate {name} {version}`")
            registry.set_backend(db, name, version, chosen)
            record = registry.get_version(db, name, version)
            console.print(f"{name} v{version} will serve with {chosen}")
        problem = registry.gate_problem(record)
        if problem and not force:
            fail(f"{problem} (use --force to promote anyway)", code=1)
        record = registry.promote(
            db, name, version, detail=f"forced: {problem}" if problem else None
        )
    except registry.RegistryError as exc:
        fail(str(exc))
    console.print(f"{name} v{record.version} is active ({record.backend})")


@app.command()
def validate(
    name: str,
    version: int,
    backend: list[str] = typer.Option(
        None, "--backend", help="Backend(s) to gate (default: every one for here)."
    ),
    timing: bool = typer.Option(True, "--timing/--no-timing", help="Measure items/s too."),
) -> None:
    """Run backends against the fp32 eager reference on the artifact's held-out rows and
    store the report. Exits 1 when the version's own backend fails."""
    from workers.runtime import registry
    from workers.runtime.backends import CPU_BACKENDS, GPU_BACKENDS
    from workers.runtime.loaded import pick_device
    from workers.runtime.quality import Thresholds
    from workers.runtime.quality import validate as run_gate

    s, db = settings(), engine()
    if s.runtime.torch_threads:
        import torch

        torch.set_num_threads(s.runtime.torch_threads)
    try:
        record = registry.get_version(db, name, version)
    except registry.RegistryError as exc:
        fail(str(exc))
    device = pick_device()
    backends = backend or list(GPU_BACKENDS if device.startswith("cuda") else CPU_BACKENDS)
    thresholds = Thresholds(s.gate.min_agreement, s.gate.max_score_diff, s.gate.max_accuracy_drop)
    try:
        report = run_gate(record, backends, device, thresholds, timing)
    except ValueError as exc:
        fail(str(exc))
    registry.save_report(db, name, version, report)
    _print_report(report)
    if not report["passed"]:
        raise typer.Exit(1)


def _print_report(report: dict[str, Any]) -> None:
    table = Table(
        "backend",
        "passed",
        "agreement",
        "max diff",
        "accuracy",
        "items/s",
        "vs eager",
        "why not",
        title=f"quality gate on {report['device']} "
        f"({report['torch_threads']} threads, {report['rows']} held-out rows); "
        "speeds at the largest batch",
    )
    for name, c in report["candidates"].items():
        speeds, ratios = c.get("items_per_s", {}), c.get("speedup_vs_eager", {})
        top = max(speeds, key=int) if speeds else None
        table.add_row(
            name,
            "yes" if c["passed"] else "NO",
            str(c.get("agreement", "")),
            str(c.get("max_score_diff", "")),
            str(c.get("accuracy", "")),
            f"{speeds[top]:,.0f}" if top else "",
            f"{ratios[top]}x" if top else "",
            "; ".join(c["reasons"]),
        )
    console.print(table)
    console.print(f"recommended backend: {report['recommended'] or 'none passed'}")


@app.command()
def rollback(name: str) -> None:
    """Re-activate the version that was active before the current one."""
    from workers.runtime import registry

    try:
        record = registry.rollback(engine(), name)
    except registry.RegistryError as exc:
        fail(str(exc))
    console.print(f"{name} v{record.version} is active again")
