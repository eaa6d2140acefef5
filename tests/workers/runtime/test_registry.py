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
