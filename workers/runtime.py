"""Load a registered model version into memory on a device, ready to score lists of inputs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from schemas.tables import ModelVersion
from workers.artifacts import load_checked
from workers.models import Architecture, get_architecture


@dataclass
class LoadedModel:
    """One model version on one device, with what every result row records as lineage."""

    name: str
    version: int
    sha256: str
    input_schema: dict[str, str]
    config: dict[str, Any]
    max_batch_size: int
    max_wait_ms: float
    backend: str
    device: str
    architecture: Architecture
    module: torch.nn.Module
    runner: Any = field(repr=False, default=None)

    def predict(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score schema-checked inputs; raises whatever the model raises."""
        batch = self.architecture.prepare(inputs, self.config)
        with torch.inference_mode():
            output = (self.runner or self.module)(_to_device(batch, self.device))
        return self.architecture.postprocess(output.detach().cpu(), self.config)


def _to_device(batch: Any, device: str) -> Any:
    if device == "cpu":
        return batch
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def pick_device() -> str:
    """The device this process scores on: its (single) visible GPU, else the CPU.

    Workers pinned to a GPU get CUDA_VISIBLE_DEVICES before torch is imported, so the
    one visible GPU is always cuda:0. Touching torch.cuda here is safe: it runs in the
    worker process after any fork.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1") and torch.cuda.is_available():
        return "cuda:0"
    return "cpu"


def load_model(record: ModelVersion, device: str = "cpu") -> LoadedModel:
    """Check the artifact's sha256, build the module, load its weights (no pickle)."""
    manifest, weights = load_checked(Path(record.artifact_uri), record.artifact_sha256)
    architecture = get_architecture(record.architecture)
    module = architecture.build(record.config)
    module.load_state_dict(weights, strict=True)
    module.eval().to(device)
    return LoadedModel(
        name=record.name,
        version=record.version,
        sha256=record.artifact_sha256,
        input_schema=dict(record.input_schema),
        config=dict(record.config),
        max_batch_size=record.max_batch_size,
        max_wait_ms=record.max_wait_ms,
        backend=record.backend,
        device=device,
        architecture=architecture,
        module=module,
    )


class ModelCache:
    """Loaded versions by (name, version); a worker process holds one copy of each."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._models: dict[tuple[str, int], LoadedModel] = {}

    def get(self, record: ModelVersion) -> LoadedModel:
        key = (record.name, record.version)
        if key not in self._models:
            self._models[key] = load_model(record, self.device)
        return self._models[key]

    def __len__(self) -> int:
        return len(self._models)
