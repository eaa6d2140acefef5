"""`scoring models ...`: register, list, validate, promote, roll back, derive model versions,
and their history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from scoring.cli.common import console, engine, fail, settings

if TYPE_CHECKING:
    from workers.runtime.quality import Thresholds

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
    """List versions; --json prints each with its input schema (for building requests) and
    what made it (training data, hyperparameters, metrics, code version)."""
    from workers.runtime import registry
    from workers.runtime.provenance import describe

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
                        "training": v.training,
                    }
                    for v in versions
                ],
                indent=2,
            )
        )
        return
    table = Table(
        "name", "version", "status", "backend", "inputs", "sha256", "activated", "training"
    )
    for v in versions:
        table.add_row(
            v.name,
            str(v.version),
            v.status,
            v.backend,
            str(len(v.input_schema)),
            v.artifact_sha256[:12],
            v.activated_at.strftime("%Y-%m-%d %H:%M:%S") if v.activated_at else "",
            describe(v.training),
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
    """Make VERSION the one new requests for NAME get. It needs a validation report whose
    verdict for its backend passed, against eager fp32 and against the active version;
    exits 1 when the gate refuses (--force promotes anyway, and records that)."""
    from workers.runtime import registry

    db = engine()
    try:
        record = registry.get_version(db, name, version)
        if auto_backend:
            chosen = (record.validation_report or {}).get("recommended")
            if not chosen:
                fail(
                    f"no recommended backend: run `scoring models validate {name} {version}`",
                    code=1,
                )
            if chosen != record.backend:
                registry.set_backend(db, name, version, chosen, action="auto-backend")
                record = registry.get_version(db, name, version)
            console.print(f"{name} v{version} will serve with {chosen}")
        problem = registry.promotion_problem(db, record)
        if problem and not force:
            fail(f"{problem} (use --force to promote anyway)", code=1)
        gate = {**(registry.gate_summary(record) or {}), "forced": bool(problem)}
        if problem:
            gate["problem"] = problem
        before = registry.active_version(db, name)
        record = registry.promote(
            db, name, version, detail=f"forced: {problem}" if problem else None, gate=gate
        )
    except registry.RegistryError as exc:
        fail(str(exc))
    console.print(f"{name} v{record.version} is active ({record.backend})")
    if before is not None and before.version != record.version:
        console.print(f"v{before.version} retired; `scoring models rollback {name}` brings it back")


def _thresholds(gate: Any) -> Thresholds:
    """The gate's thresholds from the settings (`SCORING_GATE_*`)."""
    from dataclasses import fields

    from workers.runtime.quality import Thresholds

    return Thresholds(**{f.name: getattr(gate, f.name) for f in fields(Thresholds)})


@app.command()
def validate(
    name: str,
    version: int,
    backend: list[str] = typer.Option(
        None, "--backend", help="Backend(s) to gate (default: every one for here)."
    ),
    timing: bool = typer.Option(True, "--timing/--no-timing", help="Measure items/s too."),
) -> None:
    """Run backends against the fp32 eager reference on the artifact's held-out rows, and
    the version against the active one on the same rows; store the report. Exits 1 when
    the version's own backend fails either."""
    from workers.runtime import registry
    from workers.runtime.backends import CPU_BACKENDS, GPU_BACKENDS
    from workers.runtime.loaded import pick_device
    from workers.runtime.quality import validate as run_gate

    s, db = settings(), engine()
    if s.runtime.torch_threads:
        import torch

        torch.set_num_threads(s.runtime.torch_threads)
    try:
        record = registry.get_version(db, name, version)
    except registry.RegistryError as exc:
        fail(str(exc))
    active = registry.active_version(db, name)
    device = pick_device()
    backends = backend or list(GPU_BACKENDS if device.startswith("cuda") else CPU_BACKENDS)
    try:
        report = run_gate(record, backends, device, _thresholds(s.gate), timing, active=active)
    except ValueError as exc:
        fail(str(exc))
    report_id = registry.save_report(db, name, version, report)
    _print_report(report)
    if report.get("vs_active"):
        _print_vs_active(report)
    summary = report["summary"]
    recommended = summary["recommended"] or "none passed"
    console.print(f"report #{report_id} stored; recommended backend: {recommended}")
    if not report["passed"]:
        compared = report.get("vs_active") or {}
        if record.backend not in report["candidates"]:
            why = "was not among the backends gated"
        elif not summary["passed_vs_eager"]:
            why = "failed against eager fp32"
        elif not compared.get("comparable"):
            why = f"cannot be compared with active v{compared.get('version')}"
        else:
            why = f"is worse than active v{compared['version']}"
        hint = ""
        if summary["recommended"] and summary["recommended"] != record.backend:
            hint = f"; `promote --auto-backend` would serve with {summary['recommended']}"
        console.print(f"{name} v{version} ({record.backend}) {why}{hint}")
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


def _print_vs_active(report: dict[str, Any]) -> None:
    section = report["vs_active"]
    title = (
        f"against active v{section['version']} ({section.get('compared_backend', '')}, "
        f"accuracy {section.get('accuracy')}) on the same rows; latency at the largest batch"
    )
    if not section.get("comparable"):
        console.print(f"{title}: not comparable, {section['reason']}")
        return
    if section.get("note"):
        console.print(f"active v{section['version']}: {section['note']}")
    table = Table(
        "backend", "passed", "agreement", "accuracy drop", "mean diff", "latency", "why not"
    )
    table.title = title
    for name, c in report["candidates"].items():
        v = c.get("vs_active")
        if not v:
            continue
        table.add_row(
            name,
            "yes" if v["passed"] else "NO",
            str(v["agreement"]),
            "" if v["accuracy_drop"] is None else f"{v['accuracy_drop']:+.4f}",
            str(v["mean_score_diff"]),
            "" if v["latency_ratio_top"] is None else f"{v['latency_ratio_top']}x",
            "; ".join(v["reasons"]),
        )
    console.print(table)


@app.command()
def rollback(name: str) -> None:
    """Re-activate the version that was active before the current one (workers switch on
    their next batch)."""
    from workers.runtime import registry

    try:
        record = registry.rollback(engine(), name)
    except registry.RegistryError as exc:
        fail(str(exc))
    console.print(f"{name} v{record.version} is active again")


@app.command()
def history(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Which version was active when, every change (register, validate, promote,
    rollback, backend) with the host and user that made it, and the gate summary that
    allowed each promotion."""
    from workers.runtime import registry

    try:
        result = registry.history(engine(), name)
    except registry.RegistryError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    periods = Table("version", "since", "until", "by", "who", "gate", title=f"{name}: active")
    for p in result["active_periods"]:
        periods.add_row(
            f"v{p['version']}",
            _when(p["since"]),
            _when(p["until"]) if p["until"] else "now",
            p["by"],
            _who(p),
            _gate_cell(p["gate"]),
        )
    console.print(periods)
    events = Table(
        "at", "action", "version", "from", "who", "gate", "detail", title=f"{name}: events"
    )
    for e in result["events"]:
        events.add_row(
            _when(e["at"]),
            e["action"],
            f"v{e['version']}",
            f"v{e['previous_version']}" if e["previous_version"] else "",
            _who(e),
            _gate_cell(e["gate"]),
            e["detail"] or "",
        )
    console.print(events)


def _when(at: str) -> str:
    return at[:19].replace("T", " ")


def _who(row: dict[str, Any]) -> str:
    if not row.get("user") and not row.get("host"):
        return ""
    return f"{row.get('user') or '?'}@{row.get('host') or '?'}"


def _gate_cell(gate: dict[str, Any] | None) -> str:
    """backend, verdict, agreement with eager, the comparison with the active version,
    the report it came from; or that it was forced."""
    if not gate:
        return ""
    if "backend" not in gate:
        return "forced, never validated" if gate.get("forced") else ""
    parts = [f"{gate['backend']} {'passed' if gate.get('passed') else 'FAILED'}"]
    if gate.get("agreement") is not None:
        parts.append(f"agreement {gate['agreement']}")
    vs = gate.get("vs_active")
    if vs and vs.get("version"):
        drop = vs.get("accuracy_drop")
        detail = f", accuracy {0.0 - drop:+.4f}" if drop is not None else ""
        parts.append(f"vs v{vs['version']}{detail}")
    if gate.get("report_id"):
        parts.append(f"report #{gate['report_id']}")
    if gate.get("forced"):
        parts.append("FORCED")
    return "; ".join(parts)


@app.command()
def derive(
    name: str,
    version: int,
    prune: float = typer.Option(
        ..., "--prune", help="Fraction of each hidden layer's units to remove (0 < r < 1)."
    ),
    int8: bool = typer.Option(False, "--int8", help="Serve the pruned version with int8."),
) -> None:
    """Register a structurally pruned copy of VERSION as NAME's next version (staged): the
    hidden units with the smallest weights are removed, so the layers really shrink. It
    passes the same gate as any version: `scoring models validate NAME NEW`."""
    from workers.runtime import pruning, registry

    try:
        record, made = pruning.derive(
            engine(), settings().runtime.model_store, name, version, prune, int8
        )
    except (registry.RegistryError, pruning.PruningError) as exc:
        fail(str(exc))
    console.print(
        f"derived {name} v{record.version} from v{version} ({record.status}, {record.backend}): "
        f"hidden {made['hidden_before']} -> {made['hidden_after']}, "
        f"{made['parameters_before']:,} -> {made['parameters_after']:,} parameters"
    )
    console.print(f"next: scoring models validate {name} {record.version}")


@app.command()
def report(
    name: str,
    version: int = typer.Argument(None, help="Default: the active version."),
    report_id: int = typer.Option(None, "--id", help="A report by id (as history shows)."),
) -> None:
    """Print a stored validation report as JSON: a version's latest, or one by --id."""
    from workers.runtime import registry

    db = engine()
    try:
        if report_id is not None:
            found = registry.get_report(db, name, report_id)
        else:
            record = registry.get_version(db, name, version)
            if record.validation_report is None:
                fail(f"{name} v{record.version} has no validation report", code=1)
            found = record.validation_report
    except registry.RegistryError as exc:
        fail(str(exc))
    print(json.dumps(found, indent=2))
