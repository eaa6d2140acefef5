"""Versions are registered, promoted and rolled back, with each change recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import col, select

from schemas.db import make_engine, session_scope
from schemas.tables import ModelEvent
from workers.runtime import registry
from workers.runtime.artifacts import ArtifactError, load_checked


@pytest.fixture
def engine(sqlite_url: str):  # type: ignore[no-untyped-def]
    return make_engine(sqlite_url)


def test_first_version_is_active_and_later_ones_are_staged(
    engine, tmp_path: Path, demo_artifact: Path
) -> None:
    v1 = registry.register(engine, tmp_path, "demo", demo_artifact)
    v2 = registry.register(engine, tmp_path, "demo", demo_artifact)
    assert (v1.version, v1.status, v2.version, v2.status) == (1, "active", 2, "staged")
    assert registry.active_versions(engine) == {"demo": 1}
    assert Path(v2.artifact_uri) == (tmp_path / "demo" / "2").resolve()


def test_promote_and_rollback_move_the_active_version_with_a_history(
    engine, tmp_path: Path, demo_artifact: Path
) -> None:
    for _ in range(3):
        registry.register(engine, tmp_path, "demo", demo_artifact)
    registry.promote(engine, "demo", 2)
    registry.promote(engine, "demo", 3)
    assert registry.active_versions(engine) == {"demo": 3}
    assert registry.rollback(engine, "demo").version == 2
    assert registry.rollback(engine, "demo").version == 1
    with pytest.raises(registry.RegistryError, match="no earlier active version"):
        registry.rollback(engine, "demo")
    statuses = {v.version: v.status for v in registry.list_versions(engine, "demo")}
    assert statuses == {1: "active", 2: "retired", 3: "retired"}
    with session_scope(engine) as session:
        events = session.exec(select(ModelEvent).order_by(col(ModelEvent.id))).all()
        actions = [(e.action, e.version) for e in events]
        details = [e.detail for e in events if e.action == "rollback"]
    assert [a for a in actions if a[0] in ("promote", "rollback")][-3:] == [
        ("promote", 3),
        ("rollback", 2),
        ("rollback", 1),
    ]
    assert details == ["from version 3", "from version 2"]


def test_promoting_a_missing_version_says_so(engine, tmp_path: Path, demo_artifact: Path) -> None:
    registry.register(engine, tmp_path, "demo", demo_artifact)
    with pytest.raises(registry.RegistryError, match="no version 7"):
        registry.promote(engine, "demo", 7)


def test_an_unknown_architecture_fails_at_registration(
    engine, tmp_path: Path, demo_artifact: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    manifest = json.loads((demo_artifact / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**manifest, "architecture": "resnet9000"}))
    (bad / "weights.safetensors").write_bytes((demo_artifact / "weights.safetensors").read_bytes())
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'"):
        registry.register(engine, tmp_path / "store", "demo", bad)


def test_an_artifact_changed_after_registration_does_not_load(
    engine, tmp_path: Path, demo_artifact: Path
) -> None:
    record = registry.register(engine, tmp_path, "demo", demo_artifact)
    weights = Path(record.artifact_uri) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="does not match the registry"):
        load_checked(Path(record.artifact_uri), record.artifact_sha256)


def test_every_event_records_the_host_and_user(
    engine, tmp_path: Path, demo_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "build-7")
    monkeypatch.setattr("getpass.getuser", lambda: "ana")
    registry.register(engine, tmp_path, "demo", demo_artifact)
    registry.register(engine, tmp_path, "demo", demo_artifact)
    registry.promote(engine, "demo", 2)
    registry.rollback(engine, "demo")
    with session_scope(engine) as session:
        events = session.exec(select(ModelEvent).order_by(col(ModelEvent.id))).all()
        who = {(e.host, e.username) for e in events}
        moves = [(e.action, e.version, e.previous_version) for e in events if e.previous_version]
    assert who == {("build-7", "ana")}
    assert moves == [("promote", 2, 1), ("rollback", 1, 2)]


def test_without_a_login_name_the_user_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_login() -> str:
        raise OSError("no login name")

    monkeypatch.setattr("getpass.getuser", no_login)
    monkeypatch.setenv("USER", "ci-runner")
    assert registry.actor()[1] == "ci-runner"


def test_history_says_which_version_was_active_when_and_on_what_evidence(
    engine, tmp_path: Path, demo_artifact: Path, demo_artifact_v2: Path
) -> None:
    from workers.runtime.quality import validate

    v1 = registry.register(engine, tmp_path, "demo", demo_artifact)
    v2 = registry.register(engine, tmp_path, "demo", demo_artifact_v2)
    report_id = registry.save_report(
        engine, "demo", 2, validate(v2, ["eager"], timing=False, active=v1)
    )
    gate = registry.gate_summary(registry.get_version(engine, "demo", 2))
    registry.promote(engine, "demo", 2, gate=gate)
    registry.rollback(engine, "demo")
    result = registry.history(engine, "demo")
    periods = [(p["version"], p["by"], p["until"] is None) for p in result["active_periods"]]
    assert periods == [(1, "promote", False), (2, "promote", False), (1, "rollback", True)]
    assert result["active_periods"][0]["until"] == result["active_periods"][1]["since"]
    promoted = result["active_periods"][1]["gate"]
    assert promoted["report_id"] == report_id and promoted["backend"] == "eager"
    assert promoted["passed"] and promoted["agreement"] == 1.0
    assert promoted["vs_active"]["version"] == 1 and promoted["vs_active"]["passed"]
    assert [e["action"] for e in result["events"]] == [
        "register",
        "promote",
        "register",
        "validate",
        "promote",
        "rollback",
    ]
    kept = registry.get_report(engine, "demo", report_id)
    assert kept["version"] == 2 and kept["vs_active"]["version"] == 1
    with pytest.raises(registry.RegistryError, match="no validation report 99"):
        registry.get_report(engine, "demo", 99)
    with pytest.raises(registry.RegistryError, match="has no history"):
        registry.history(engine, "nope")


def test_a_version_keeps_what_made_it(engine, tmp_path: Path, demo_artifact: Path) -> None:
    from workers.runtime.models.demo.build import train

    record = registry.register(engine, tmp_path, "demo", demo_artifact)
    training = registry.get_version(engine, "demo", 1).training or {}
    assert training == record.training
    assert len(training["data"]["sha256"]) == 64 and training["data"]["rows"] == 455
    assert training["hyperparameters"]["hidden"] == [512, 512]
    assert training["hyperparameters"]["learning_rate"] == 1e-3
    assert 0.9 < training["metrics"]["held_out_accuracy"] <= 1.0
    assert training["code_version"].get("git_commit") or training["code_version"].get("version")
    # the same data for another seed: the same data identity, other weights
    _, other = train(seed=1, epochs=1)
    assert other["training"]["data"]["sha256"] == training["data"]["sha256"]
    assert other["training"]["hyperparameters"]["epochs"] == 1


def test_a_training_block_that_is_not_an_object_is_refused(
    engine, tmp_path: Path, demo_artifact: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    manifest = json.loads((demo_artifact / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**manifest, "training": "yesterday"}))
    (bad / "weights.safetensors").write_bytes((demo_artifact / "weights.safetensors").read_bytes())
    with pytest.raises(registry.RegistryError, match="'training' must be an object"):
        registry.register(engine, tmp_path / "store", "demo", bad)


def test_the_lifecycle_migration_goes_up_and_down(db_url: str) -> None:
    """0002 and 0003 on SQLite and PostgreSQL: the tables match the models, and they
    revert."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect
    from sqlmodel import SQLModel

    from schemas.db import MIGRATIONS_DIR

    ours = {"model_versions", "model_events", "model_validations", "bulk_", "score_results"}
    eng = make_engine(db_url)

    def differences() -> list[object]:
        with eng.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        return [d for d in diff if any(t in repr(d) for t in ours)]

    assert differences() == []
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    command.downgrade(cfg, "0001")
    eng.dispose()
    tables = inspect(eng)
    assert "model_validations" not in tables.get_table_names()
    assert "host" not in {c["name"] for c in tables.get_columns("model_events")}
    assert "training" not in {c["name"] for c in tables.get_columns("model_versions")}
    assert "bulk_chunks" not in tables.get_table_names()
    assert "bulk_chunk" not in {c["name"] for c in tables.get_columns("score_results")}
    command.upgrade(cfg, "head")
    eng.dispose()
    assert differences() == []
    eng.dispose()


def test_reading_the_registry_imports_no_torch() -> None:
    """`scoring models list/history/rollback` answer in a second, not after torch loads."""
    import subprocess
    import sys

    probe = (
        "import sys, workers.runtime.registry, workers.runtime.provenance\n"
        "print([m for m in ('torch', 'safetensors') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
