"""What made a model version: the identity of its training data and of the code.

A build writes these into the artifact's `model.json` under `training`; the registry keeps
that block on the version (`model_versions.training`) and `scoring models list/history`
show it.
"""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE = "scoring-workers"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def data_sha256(*arrays: np.ndarray) -> str:
    """sha256 over arrays' dtypes, shapes and bytes (C order): the same data, the same
    digest, on any machine."""
    digest = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(array)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def text_sha256(texts: list[str]) -> str:
    """sha256 of a list of strings (each length-prefixed, so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode()
        digest.update(len(raw).to_bytes(8, "big") + raw)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The git commit the code runs from (and whether the tree had changes), else the
    installed package's version."""
    git = _git("rev-parse", "HEAD")
    if git:
        status = _git("status", "--porcelain", "--untracked-files=no")
        return {"git_commit": git, "dirty": bool(status)}
    try:
        return {"package": PACKAGE, "version": metadata.version(PACKAGE)}
    except metadata.PackageNotFoundError:
        return {"package": PACKAGE, "version": "unknown"}


def _git(*args: str) -> str | None:
    if not (_SOURCE_ROOT / ".git").exists():
        return None
    try:
        done = subprocess.run(  # nosec B603,B607
            ["git", "-C", str(_SOURCE_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def describe(training: dict[str, Any] | None) -> str:
    """One short line for a listing: data, the headline metric, code; or the derivation."""
    if not training:
        return ""
    derived = training.get("derived_from")
    if derived:
        recipe = [f"prune {training['prune_ratio']}"] if training.get("prune_ratio") else []
        if training.get("int8"):
            recipe.append("int8")
        return f"from v{derived['version']} ({', '.join(recipe) or 'copy'})"
    parts = []
    data = training.get("data") or {}
    if data.get("sha256"):
        parts.append(f"data {data['sha256'][:8]}")
    elif data.get("snapshot"):
        parts.append(f"data {data['snapshot']}")
    metrics = training.get("metrics") or {}
    accuracy = metrics.get("held_out_accuracy", training.get("held_out_accuracy"))
    if accuracy is not None:
        parts.append(f"acc {float(accuracy):.3f}")
    code = training.get("code_version") or {}
    if code.get("git_commit"):
        parts.append(f"git {code['git_commit'][:7]}{'+' if code.get('dirty') else ''}")
    elif code.get("version"):
        parts.append(f"v{code['version']}")
    return " · ".join(parts)
