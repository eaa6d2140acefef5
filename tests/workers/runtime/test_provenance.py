"""What made a version: data identity and code version, and the one-line summary."""

from __future__ import annotations

import numpy as np

from workers.runtime import provenance
from workers.runtime.provenance import data_sha256, describe, text_sha256


def test_data_identity_changes_with_any_value_shape_or_type() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.array([0, 1, 0])
    digest = data_sha256(x, y)
    assert digest == data_sha256(x.copy(), y.copy()) and len(digest) == 64
    changed = x.copy()
    changed[2, 3] += 1e-3
    assert len({digest, data_sha256(changed, y), data_sha256(x.reshape(4, 3), y)}) == 3
    assert data_sha256(x.astype(np.float64), y) != digest
    assert data_sha256(np.asfortranarray(x), y) == digest  # layout does not matter
    assert text_sha256(["ab", "c"]) != text_sha256(["a", "bc"])


def test_code_version_is_the_git_commit_or_else_the_package_version(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    provenance.code_version.cache_clear()
    here = provenance.code_version()
    assert len(here["git_commit"]) == 40 and isinstance(here["dirty"], bool)
    provenance.code_version.cache_clear()
    monkeypatch.setattr(provenance, "_git", lambda *args: None)
    assert provenance.code_version() == {"package": "scoring-workers", "version": "0.1.0"}
    provenance.code_version.cache_clear()


def test_describe_gives_one_line_for_a_listing() -> None:
    trained = {
        "data": {"sha256": "b0bc412b" + "0" * 56},
        "metrics": {"held_out_accuracy": 0.97368},
        "code_version": {"git_commit": "3f9c6f8" + "0" * 33, "dirty": True},
    }
    assert describe(trained) == "data b0bc412b · acc 0.974 · git 3f9c6f8+"
    derived = {"derived_from": {"version": 2}, "prune_ratio": 0.3, "int8": True}
    assert describe(derived) == "from v2 (prune 0.3, int8)"
    snapshot = {"data": {"snapshot": "2026-11-30"}, "code_version": {"version": "0.1.0"}}
    assert describe(snapshot) == "data 2026-11-30 · v0.1.0"
    assert describe(None) == ""
