"""The model registry: versions of named models in the database, and which one is active.

Every change is a row of `model_events` with the host and user that made it; a promotion
also records the gate summary that allowed it (or that it was forced past), and every
validation report is kept in `model_validations`, so `history` can say which version was
active when, who changed it, and on what evidence.
"""

from __future__ import annotations

import getpass
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from schemas import names as c
from schemas.db import session_scope
from schemas.tables import ModelEvent, ModelValidation, ModelVersion, utcnow
from workers.runtime.artifacts import artifact_sha256, copy_into_store, read_manifest

# Events that change which version is active.
ACTIVATIONS = ("promote", "rollback")


class RegistryError(ValueError):
    """A registry operation that cannot be done, with the reason."""


def actor() -> tuple[str, str]:
    """(host, user) of this process, for the audit trail."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        user = os.environ.get("USER", "") or f"uid {os.getuid()}"
    return socket.gethostname(), user


def _event(
    session: Session,
    name: str,
    version: int,
    action: str,
    detail: str | None = None,
    *,
    previous: int | None = None,
    gate: dict[str, Any] | None = None,
) -> None:
    host, user = actor()
    session.add(
        ModelEvent(
            name=name,
            version=version,
            action=action,
            detail=detail,
            previous_version=previous,
            host=host,
            username=user,
            gate=gate,
        )
    )


def register(
    engine: Engine, store: Path, name: str, source: Path, detail: str | None = None
) -> ModelVersion:
    """Copy an artifact into the store as the next version of `name`.

    The first version of a name becomes active (there is nothing else to serve);
    later ones are staged until promoted. The manifest's `training` block (data identity,
    hyperparameters, metrics, code version) is kept on the version.
    """
    # Here, not at the top: listing, history and rollback then never import torch.
    from workers.runtime.backends import ALL_BACKENDS
    from workers.runtime.models import get_architecture

    manifest = read_manifest(source)
    get_architecture(manifest["architecture"])  # fail now, not while serving
    runtime: dict[str, Any] = manifest.get("runtime", {})
    if runtime.get("backend", "eager") not in ALL_BACKENDS:
        raise RegistryError(
            f"unknown backend {runtime['backend']!r}; choose from {', '.join(ALL_BACKENDS)}"
        )
    training = manifest.get("training")
    if training is not None and not isinstance(training, dict):
        raise RegistryError(f"{source}: model.json 'training' must be an object")
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
            reference_stats=reference_of(manifest),
            training=training,
            status=c.VERSION_ACTIVE if version == 1 else c.VERSION_STAGED,
            activated_at=utcnow() if version == 1 else None,
        )
        session.add(record)
        _event(session, name, version, "register", detail or str(source))
        if version == 1:
            _event(session, name, 1, "promote", "first version")
    return record


def reference_of(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The drift reference of a new version: its held-out rows binned per feature, with
    their labels (schemas/drift_bins.py); validation adds what the model predicts on them.
    An artifact without held-out rows keeps whatever reference its manifest carries."""
    from schemas import drift_bins  # numpy: only where a version is registered

    rows = manifest.get("validation_set") or []
    if not rows:
        return manifest.get("reference_stats")
    schema: dict[str, str] = manifest["input_schema"]
    columns = {name: [r["inputs"].get(name) for r in rows] for name in schema}
    return drift_bins.reference(columns, schema, labels=[r.get("label") for r in rows])


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


def active_version(engine: Engine, name: str) -> ModelVersion | None:
    """The active version of `name`, or None."""
    try:
        return get_version(engine, name)
    except RegistryError:
        return None


def active_versions(engine: Engine) -> dict[str, int]:
    """Model name -> active version: one query, run once per micro-batch."""
    with session_scope(engine) as session:
        rows = session.exec(
            select(ModelVersion.name, ModelVersion.version).where(
                ModelVersion.status == c.VERSION_ACTIVE
            )
        ).all()
    return {name: version for name, version in rows}


def promote(
    engine: Engine,
    name: str,
    version: int,
    detail: str | None = None,
    *,
    gate: dict[str, Any] | None = None,
) -> ModelVersion:
    """Make `version` the one new requests get; the previously active one is retired.

    This enforces nothing: `scoring models promote` checks the gate (`gate_problem`) and
    passes the summary that allowed the promotion as `gate`, recorded on the event.
    """
    with session_scope(engine) as session:
        target = session.exec(
            select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        ).first()
        if target is None:
            raise RegistryError(f"model {name!r} has no version {version}")
        previous = _activate(session, target)
        _event(session, name, version, "promote", detail, previous=previous, gate=gate)
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
            .where(ModelEvent.name == name, col(ModelEvent.action).in_(ACTIVATIONS))
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
        previous = _activate(session, target)
        _event(
            session,
            name,
            target.version,
            "rollback",
            f"from version {previous}",
            previous=previous,
            gate=gate_summary(target),
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


def _activate(session: Session, target: ModelVersion) -> int | None:
    """Make `target` the active version; return the version that was active before."""
    now = utcnow()
    previous = None
    for other in session.exec(
        select(ModelVersion).where(
            ModelVersion.name == target.name, ModelVersion.status == c.VERSION_ACTIVE
        )
    ).all():
        previous = other.version
        if other.id != target.id:
            other.status, other.retired_at = c.VERSION_RETIRED, now
            session.add(other)
    target.status, target.activated_at, target.retired_at = c.VERSION_ACTIVE, now, None
    session.add(target)
    return previous


def set_backend(
    engine: Engine, name: str, version: int, backend: str, *, action: str = "set-backend"
) -> None:
    """Change the backend a version serves with (`auto-backend`: the gate recommended it)."""
    with session_scope(engine) as session:
        record = session.exec(
            select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        ).one()
        came_from, record.backend = record.backend, backend
        if record.validation_report:
            record.validation_report = _report_for_backend(record.validation_report, backend)
        session.add(record)
        _event(
            session,
            name,
            version,
            action,
            f"{came_from} -> {backend}",
            gate=gate_summary(record),
        )


def _verdict(report: dict[str, Any], backend: str) -> tuple[bool, bool | None]:
    """(passed against eager fp32, passed against the active version or None when there
    was no other active version) for `backend`, from a validation report."""
    own = report.get("candidates", {}).get(backend, {})
    vs_eager = bool(own.get("passed"))
    compared = report.get("vs_active")
    if not compared:
        return vs_eager, None
    if not compared.get("comparable", True):
        return vs_eager, False
    return vs_eager, bool((own.get("vs_active") or {}).get("passed"))


def _report_for_backend(report: dict[str, Any], backend: str) -> dict[str, Any]:
    """The report's verdict restated for `backend` (its own result, vs eager and vs active)."""
    vs_eager, vs_active = _verdict(report, backend)
    passed = vs_eager and vs_active is not False
    return {
        **report,
        "passed": passed,
        "summary": {
            **report.get("summary", {}),
            "backend": backend,
            "passed": passed,
            "passed_vs_eager": vs_eager,
            "passed_vs_active": vs_active,
        },
    }


def gate_problem(record: ModelVersion, active: int | None = None) -> str | None:
    """Why `record` may not be promoted, or None.

    Every version needs a validation report, eager ones too: the report is where the
    comparison with the active version lives. Its own backend must have passed against
    eager fp32 and, when another version (`active`) serves now, against that version on
    the same held-out rows.
    """
    report = record.validation_report
    run = f"run `scoring models validate {record.name} {record.version}`"
    if report is None:
        return f"{record.name} v{record.version} ({record.backend}) has not been validated: {run}"
    own = report.get("candidates", {}).get(record.backend)
    if own is None:
        return f"the validation report has no result for backend {record.backend!r}: {run}"
    if not own.get("passed"):
        return f"backend {record.backend!r} failed the quality gate: " + "; ".join(own["reasons"])
    if active is None or active == record.version:
        return None
    compared = report.get("vs_active") or {}
    if compared.get("version") != active:
        against = f"v{compared['version']}" if compared.get("version") else "no active version"
        return (
            f"v{record.version} was validated against {against}, but v{active} is active "
            f"now: {run} again"
        )
    if not compared.get("comparable", True):
        return f"v{record.version} cannot be compared with active v{active}: {compared['reason']}"
    verdict = own.get("vs_active") or {}
    if not verdict.get("passed"):
        reasons = "; ".join(verdict.get("reasons") or ["no comparison for this backend"])
        return f"v{record.version} ({record.backend}) is worse than active v{active}: {reasons}"
    return None


def promotion_problem(engine: Engine, record: ModelVersion) -> str | None:
    """`gate_problem` against the version active right now."""
    current = active_version(engine, record.name)
    return gate_problem(record, current.version if current else None)


def gate_summary(record: ModelVersion) -> dict[str, Any] | None:
    """What the version's latest report says about its own backend, in a few fields."""
    report = record.validation_report
    if not report:
        return None
    own = report.get("candidates", {}).get(record.backend, {})
    vs_active = own.get("vs_active")
    compared = report.get("vs_active") or {}
    vs_eager_passed, vs_active_passed = _verdict(report, record.backend)
    return {
        "report_id": report.get("report_id"),
        "validated_at": report.get("at"),
        "device": report.get("device"),
        "backend": record.backend,
        "passed": vs_eager_passed and vs_active_passed is not False,
        "agreement": own.get("agreement"),
        "max_score_diff": own.get("max_score_diff"),
        "accuracy": own.get("accuracy"),
        "vs_active": None
        if not compared
        else {
            "version": compared.get("version"),
            "comparable": compared.get("comparable", True),
            "agreement": (vs_active or {}).get("agreement"),
            "accuracy_drop": (vs_active or {}).get("accuracy_drop"),
            "latency_ratio": (vs_active or {}).get("latency_ratio_top"),
            "passed": vs_active_passed,
        },
    }


def save_report(engine: Engine, name: str, version: int, report: dict[str, Any]) -> int:
    """Keep a validation report (a new row of model_validations, and the version's latest)
    and record the event; returns the report's id."""
    host, user = actor()
    with session_scope(engine) as session:
        record = session.exec(
            select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        ).one()
        kept = ModelValidation(
            name=name,
            version=version,
            backend=record.backend,
            passed=bool(report.get("passed")),
            active_version=(report.get("vs_active") or {}).get("version"),
            report=report,
            host=host,
            username=user,
        )
        session.add(kept)
        session.flush()
        assert kept.id is not None
        record.validation_report = {**report, "report_id": kept.id}
        predictions = report.get("reference_predictions")
        if predictions and record.reference_stats:  # what fp32 predicts on the held-out rows
            record.reference_stats = {**record.reference_stats, "predictions": predictions}
        session.add(record)
        _event(
            session,
            name,
            version,
            "validate",
            "passed" if report.get("passed") else "failed",
            gate=gate_summary(record),
        )
    return kept.id


def get_report(engine: Engine, name: str, report_id: int) -> dict[str, Any]:
    """A kept validation report by id (as `history` refers to them)."""
    with session_scope(engine) as session:
        row = session.get(ModelValidation, report_id)
    if row is None or row.name != name:
        raise RegistryError(f"model {name!r} has no validation report {report_id}")
    return {**row.report, "report_id": row.id, "version": row.version}


def history(engine: Engine, name: str) -> dict[str, Any]:
    """Every event of `name` (oldest first) and the periods each version was active."""
    with session_scope(engine) as session:
        events = list(
            session.exec(
                select(ModelEvent).where(ModelEvent.name == name).order_by(col(ModelEvent.id))
            ).all()
        )
    if not events:
        raise RegistryError(f"model {name!r} has no history; see `scoring models list`")
    rows = [_event_row(e) for e in events]
    periods: list[dict[str, Any]] = []
    for row in rows:
        if row["action"] not in ACTIVATIONS:
            continue
        if periods and periods[-1]["until"] is None:
            if periods[-1]["version"] == row["version"]:
                continue  # promoted again while active: the period goes on
            periods[-1]["until"] = row["at"]
        periods.append(
            {
                "version": row["version"],
                "since": row["at"],
                "until": None,
                "by": row["action"],
                "host": row["host"],
                "user": row["user"],
                "gate": row["gate"],
            }
        )
    return {"name": name, "events": rows, "active_periods": periods}


def _event_row(event: ModelEvent) -> dict[str, Any]:
    at: datetime = event.at
    return {
        "id": event.id,
        "at": at.isoformat(),
        "action": event.action,
        "version": event.version,
        "previous_version": event.previous_version,
        "host": event.host,
        "user": event.username,
        "detail": event.detail,
        "gate": event.gate,
    }
