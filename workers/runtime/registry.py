"""The model registry: versions of named models in the database, and which one is active."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import col, select

from schemas import names as c
from schemas.db import session_scope
from schemas.tables import ModelEvent, ModelVersion, utcnow
from workers.runtime.artifacts import artifact_sha256, copy_into_store, read_manifest
from workers.runtime.backends import ALL_BACKENDS
from workers.runtime.models import get_architecture


class RegistryError(ValueError):
    """A registry operation that cannot be done, with the reason."""


def register(engine: Engine, store: Path, name: str, source: Path) -> ModelVersion:
    """Copy an artifact into the store as the next version of `name`.

    The first version of a name becomes active (there is nothing else to serve);
    later ones are staged until promoted.
    """
    manifest = read_manifest(source)
    get_architecture(manifest["architecture"])  # fail now, not while serving
    runtime: dict[str, Any] = manifest.get("runtime", {})
    if runtime.get("backend", "eager") not in ALL_BACKENDS:
        raise RegistryError(
            f"unknown backend {runtime['backend']!r}; choose from {', '.join(ALL_BACKENDS)}"
        )
    with session_scope(engine) as session:
        latest = session.exec(
            select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
        ).one()
        version = (latest or 0) + 1
        folder = copy_into_store(source, store, name, version)
        record = ModelVersion(
            name=name,
            version=version,
            architecture=manifest["architecture"],
            config=manifest["config"],
            artifact_uri=str(folder.resolve()),
            artifact_sha256=artifact_sha256(folder),
            input_schema=manifest["input_schema"],
            backend=runtime.get("backend", "eager"),
            precision=runtime.get("precision", "fp32"),
            max_batch_size=int(runtime.get("max_batch_size", 256)),
            max_wait_ms=float(runtime.get("max_wait_ms", 10.0)),
            reference_stats=manifest.get("reference_stats"),
            status=c.VERSION_ACTIVE if version == 1 else c.VERSION_STAGED,
            activated_at=utcnow() if version == 1 else None,
        )
        session.add(record)
        session.add(ModelEvent(name=name, version=version, action="register", detail=str(source)))
        if version == 1:
            session.add(ModelEvent(name=name, version=1, action="promote", detail="first version"))
    return record


def list_versions(engine: Engine, name: str | None = None) -> list[ModelVersion]:
    with session_scope(engine) as session:
        query = select(ModelVersion).order_by(col(ModelVersion.name), col(ModelVersion.version))
        if name:
            query = query.where(ModelVersion.name == name)
        return list(session.exec(query).all())


def get_version(engine: Engine, name: str, version: int | None = None) -> ModelVersion:
    """A specific version, or the active one when `version` is None."""
    with session_scope(engine) as session:
        query = select(ModelVersion).where(ModelVersion.name == name)
        if version is None:
            query = query.where(ModelVersion.status == c.VERSION_ACTIVE)
        else:
            query = query.where(ModelVersion.version == version)
        record = session.exec(query).first()
    if record is None:
        what = f"version {version}" if version else "active version"
        raise RegistryError(f"model {name!r} has no {what}; see `scoring models list`")
    return record


def active_versions(engine: Engine) -> dict[str, int]:
    """Model name -> active version: one query, run once per micro-batch."""
    with session_scope(engine) as session:
        rows = session.exec(
            select(ModelVersion.name, ModelVersion.version).where(
                ModelVersion.status == c.VERSION_ACTIVE
            )
        ).all()
    return {name: version for name, version in rows}


def promote(engine: Engine, name: str, version: int, detail: str | None = None) -> ModelVersion:
    """Make `version` the one new requests get; the previously active one is retired."""
    with session_scope(engine) as session:
        target = session.exec(
            select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        ).first()
        if target is None:
            raise RegistryError(f"model {name!r} has no version {version}")
        _activate(session, target)
        session.add(ModelEvent(name=name, version=version, action="promote", detail=detail))
    return target


def rollback(engine: Engine, name: str) -> ModelVersion:
    """Re-activate the version that was active before the current one."""
    with session_scope(engine) as session:
        current = session.exec(
            select(ModelVersion).where(
                ModelVersion.name == name, ModelVersion.status == c.VERSION_ACTIVE
            )
        ).first()
        events = session.exec(
            select(ModelEvent)
            .where(ModelEvent.name == name, col(ModelEvent.action).in_(["promote", "rollback"]))
            .order_by(col(ModelEvent.id))
        ).all()
        history = _activation_stack(list(events))
        if current is not None and history and history[-1] == current.version:
            history.pop()
        if not history:
            raise RegistryError(f"model {name!r} has no earlier active version to roll back to")
        target = session.exec(
            select(ModelVersion).where(
                ModelVersion.name == name, ModelVersion.version == history[-1]
            )
        ).one()
        _activate(session, target)
        came_from = current.version if current else None
        session.add(
            ModelEvent(
                name=name,
                version=target.version,
                action="rollback",
                detail=f"from version {came_from}",
            )
        )
    return target


def _activation_stack(events: list[ModelEvent]) -> list[int]:
    """Versions in activation order: a promote pushes, a rollback pops back to its target."""
    stack: list[int] = []
    for event in events:
        if event.action == "promote":
            stack.append(event.version)
            continue
        while stack and stack[-1] != event.version:
            stack.pop()
        if not stack:
            stack.append(event.version)
    return stack


def _activate(session: Any, target: ModelVersion) -> None:
    now = utcnow()
    for other in session.exec(
        select(ModelVersion).where(
            ModelVersion.name == target.name, ModelVersion.status == c.VERSION_ACTIVE
        )
    ).all():
        if other.id != target.id:
            other.status, other.retired_at = c.VERSION_RETIRED, now
            session.add(other)
    target.status, target.activated_at, target.retired_at = c.VERSION_ACTIVE, now, None
    session.add(target)


def set_backend(engine: Engine, name: str, version: int, backend: str) -> None:
    """Change the backend a version serves with (after the gate recommended it)."""
    with session_scope(engine) as session:
        record = session.exec(
            select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        ).one()
        came_from, record.backend = record.backend, backend
        if record.validation_report:
            own = record.validation_report.get("candidates", {}).get(backend, {})
            record.validation_report = {
                **record.validation_report,
                "passed": bool(own.get("passed")),
                "summary": {
                    **record.validation_report["summary"],
                    "backend": backend,
                    "passed": bool(own.get("passed")),
                },
            }
        session.add(record)
        session.add(
            ModelEvent(
                name=name, version=version, action="set-backend", detail=f"{came_from} -> {backend}"
            )
        )


def gate_problem(record: ModelVersion) -> str | None:
    """Why `record` may not be promoted, or None. Eager fp32 is the reference itself."""
    report = record.validation_report
    if report is None:
        if record.backend == "eager":
            return None
        return (
            f"{record.name} v{record.version} ({record.backend}) has not been validated: "
            f"run `scoring models validate {record.name} {record.version}`"
        )
    own = report.get("candidates", {}).get(record.backend)
    if own is None:
        return f"the validation report has no result for backend {record.backend!r}"
    if not own.get("passed"):
        return f"backend {record.backend!r} failed the quality gate: " + "; ".join(own["reasons"])
    return None


def save_report(engine: Engine, name: str, version: int, report: dict[str, Any]) -> None:
    """Store a validation report on the version and record the event."""
    with session_scope(engine) as session:
        record = session.exec(
            select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        ).one()
        record.validation_report = report
        session.add(record)
        session.add(
            ModelEvent(
                name=name,
                version=version,
                action="validate",
                detail="passed" if report.get("passed") else "failed",
            )
        )
