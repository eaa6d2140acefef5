"""Model artifacts on disk: a manifest plus safetensors weights, checked by sha256.

Safetensors holds tensors only, so loading runs no pickled code (unlike torch.load).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and safetensors load only where weights are read or written,
    import torch  # so that the registry's listings and rollbacks start fast

MANIFEST = "model.json"
WEIGHTS = "weights.safetensors"
ARTIFACT_FILES = (MANIFEST, WEIGHTS)


class ArtifactError(RuntimeError):
    """An artifact is missing, malformed, or does not match its recorded sha256."""


def artifact_sha256(directory: Path) -> str:
    """sha256 over the manifest and the weights, in a fixed order."""
    digest = hashlib.sha256()
    for name in ARTIFACT_FILES:
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: missing {name}")
        digest.update(name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest, with the keys every architecture needs checked."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{directory / MANIFEST}: {exc}") from exc
    missing = {"architecture", "config", "input_schema"} - manifest.keys()
    if missing:
        raise ArtifactError(f"{directory / MANIFEST}: missing keys {sorted(missing)}")
    return manifest


def save_artifact(directory: Path, manifest: dict[str, Any], module: torch.nn.Module) -> str:
    """Write a manifest and the module's weights; return the artifact's sha256."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    return artifact_sha256(directory)


def copy_into_store(source: Path, store: Path, name: str, version: int) -> Path:
    """Copy an artifact into the model store as NAME/VERSION/ and return that folder."""
    target = store / name / str(version)
    target.mkdir(parents=True, exist_ok=True)
    for file in ARTIFACT_FILES:
        shutil.copyfile(source / file, target / file)
    return target


def load_checked(directory: Path, expected_sha256: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Manifest and weights, after the files' sha256 matches the registry's record."""
    from safetensors.torch import load_file

    actual = artifact_sha256(directory)
    if actual != expected_sha256:
        raise ArtifactError(
            f"{directory}: sha256 {actual[:12]}… does not match the registry's "
            f"{expected_sha256[:12]}…; the artifact changed after registration"
        )
    return read_manifest(directory), load_file(str(directory / WEIGHTS))
