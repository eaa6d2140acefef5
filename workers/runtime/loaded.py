"""Load a registered model version into memory on a device, ready to score lists of inputs."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from schemas.tables import ModelVersion
from workers.runtime import trace_guard
from workers.runtime.artifacts import load_checked
from workers.runtime.backends import COMPILED, apply_backend, bucket_for, buckets
from workers.runtime.models import Architecture, get_architecture
from workers.runtime.tensorrt import TRT_DIR, TensorRTTarget


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
    runner: Any = field(repr=False, default=None)  # what serves: module or its compiled form
    # The version's drift bins (schemas/drift_bins.py): each model call is summarised on them.
    reference: dict[str, Any] | None = field(repr=False, default=None)

    def predict(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score schema-checked inputs; raises whatever the model raises.

        Compiled backends see only bucket-sized batches (padded by repeating the last
        row, then trimmed), so serving never triggers a recompilation.
        """
        return self._run(self.architecture.prepare(inputs, self.config), len(inputs))

    def predict_columns(self, columns: dict[str, Any], n: int) -> list[dict[str, Any]]:
        """Score `n` schema-checked rows given as columns (numpy arrays, lists for text):
        bulk chunks skip building a dict per row where the architecture takes columns."""
        prepare = getattr(self.architecture, "prepare_columns", None)
        if prepare is not None:
            return self._run(prepare(columns, self.config), n)
        return self.predict(rows_of(columns))

    def _run(self, batch: tuple[torch.Tensor, ...], n: int) -> list[dict[str, Any]]:
        if self.backend in COMPILED:
            batch = _pad(batch, bucket_for(n, self.max_batch_size))
        with torch.inference_mode():
            tensors = [_to_device(t, self.device) for t in batch]
            output = trace_guard.call(self.runner, *tensors)  # a compile elsewhere may trace
        return self.architecture.postprocess(output[:n].detach().float().cpu(), self.config)

    def warm_up(self, example: dict[str, Any]) -> list[int]:
        """Run every batch bucket (compiles happen here, not on a request). On CUDA each
        bucket runs three times: compiled models record their CUDA graphs on a later call."""
        sizes = buckets(self.max_batch_size) if self.backend in COMPILED else [1]
        repeats = 3 if self.device.startswith("cuda") else 1
        for size in sizes:
            for _ in range(repeats):
                self.predict([example] * size)
        return sizes


def rows_of(columns: dict[str, Any]) -> list[dict[str, Any]]:
    """Columns (numpy arrays or lists) as one dict of plain Python values per row."""
    names = list(columns)
    values = [v if isinstance(v, list) else v.tolist() for v in columns.values()]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def example_inputs(schema: dict[str, str]) -> dict[str, Any]:
    """A valid request body for `schema`, for warm-up runs."""
    values = {"float": 0.0, "int": 0, "str": "warm up the model", "bool": False}
    return {name: values[type_name] for name, type_name in schema.items()}


def _pad(batch: tuple[torch.Tensor, ...], size: int) -> tuple[torch.Tensor, ...]:
    n = batch[0].shape[0]
    if n == size:
        return batch
    return tuple(torch.cat([t, t[-1:].expand(size - n, *t.shape[1:])]) for t in batch)


def _to_device(tensor: torch.Tensor, device: str) -> torch.Tensor:
    return tensor if device == "cpu" else tensor.to(device, non_blocking=True)


def pick_device() -> str:
    """The device this process scores on: its (single) visible GPU, else the CPU.

    Workers pinned to a GPU get CUDA_VISIBLE_DEVICES before torch is imported, so the
    one visible GPU is always cuda:0. Touching torch.cuda here is safe: it runs in the
    worker process after any fork.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1") and torch.cuda.is_available():
        return "cuda:0"
    return "cpu"


def load_model(
    record: ModelVersion, device: str = "cpu", backend: str | None = None
) -> LoadedModel:
    """Check the artifact's sha256, build the module, load its weights (no pickle), and
    prepare it for `backend` (default: the version's own)."""
    _, weights = load_checked(Path(record.artifact_uri), record.artifact_sha256)
    architecture = get_architecture(record.architecture)
    module = architecture.build(record.config)
    architecture.load_weights(module, weights)
    module.eval().to(device)
    backend = backend or record.backend
    target = tensorrt_target(record, architecture) if backend == "tensorrt" else None
    return LoadedModel(
        name=record.name,
        version=record.version,
        sha256=record.artifact_sha256,
        input_schema=dict(record.input_schema),
        config=dict(record.config),
        max_batch_size=record.max_batch_size,
        max_wait_ms=record.max_wait_ms,
        backend=backend,
        device=device,
        architecture=architecture,
        module=module,
        runner=apply_backend(module, backend, device, record.config, tensorrt=target),
        reference=record.reference_stats,
    )


def tensorrt_target(record: ModelVersion, architecture: Architecture) -> TensorRTTarget:
    """Example inputs (one valid request, prepared), the serving buckets, and the engine
    cache inside the version's folder of the model store: <store>/<name>/<version>/trt."""
    example = architecture.prepare([example_inputs(dict(record.input_schema))], record.config)
    return TensorRTTarget(
        example=tuple(example),
        buckets=tuple(buckets(record.max_batch_size)),
        cache_dir=Path(record.artifact_uri) / TRT_DIR,
        sha256=record.artifact_sha256,
    )


class LoadListener(Protocol):
    """Told of each version the cache loads (seconds to load, to warm up) or fails to."""

    def model_loaded(self, model: LoadedModel, load_s: float, warm_up_s: float) -> None: ...

    def model_failed(self, name: str, version: int, backend: str) -> None: ...


class ModelCache:
    """Loaded versions by (name, version); a worker process holds one copy of each.

    A version is warmed up (every batch bucket run) as it is loaded, before it serves its
    first batch: at worker start for the active versions, by the version watcher
    (workers/core/switch.py) on its own thread for a version promoted later, and on first
    use for any other (a version named by a request), so serving never compiles.

    Safe from several threads: a lock guards the dict, loading runs outside it (the
    scorer keeps serving loaded versions while the watcher warms a new one), and two
    threads asking for the same version load it once.
    """

    def __init__(self, device: str = "cpu", listener: LoadListener | None = None) -> None:
        self.device = device
        self.listener = listener
        self._models: dict[tuple[str, int], LoadedModel] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self._named: dict[tuple[str, int], float] = {}  # last time a request named it
        # (name, version) -> (max_batch_size, max_wait_ms) of each loaded version; a new
        # dict on every change, so the batcher reads it without the lock
        self.limits: dict[tuple[str, int], tuple[int, float]] = {}

    def get(self, record: ModelVersion, named: bool = False) -> LoadedModel:
        """The loaded version, loading and warming it up first if need be. `named`: a
        request asked for this version by number (it is then kept after a switch)."""
        key = (record.name, record.version)
        with self._lock:
            if named:
                self._named[key] = time.monotonic()
            model = self._models.get(key)
            if model is not None:
                return model
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per version; other versions load (and serve) meanwhile
            with self._lock:
                model = self._models.get(key)
            if model is None:
                model = self._load(record)
                with self._lock:
                    self._models[key] = model
                    self._loading.pop(key, None)
                    self.limits = {**self.limits, key: (model.max_batch_size, model.max_wait_ms)}
        return model

    def peek(self, name: str, version: int) -> LoadedModel | None:
        """The version if it is loaded; never loads."""
        with self._lock:
            return self._models.get((name, version))

    def release(self, name: str, version: int, keep_named_within_s: float = 0.0) -> bool:
        """Drop a loaded version (its memory goes once no batch holds it), unless a request
        named it within the last `keep_named_within_s` seconds. True if it was dropped."""
        key = (name, version)
        with self._lock:
            named = self._named.get(key)
            if named is not None and time.monotonic() - named < keep_named_within_s:
                return False
            if self._models.pop(key, None) is None:
                return False
            self._named.pop(key, None)
            self.limits = {k: v for k, v in self.limits.items() if k != key}
        return True

    def loaded(self) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(self._models)

    def _load(self, record: ModelVersion) -> LoadedModel:
        began = time.perf_counter()
        try:
            model = load_model(record, self.device)
            loaded = time.perf_counter()
            model.warm_up(example_inputs(model.input_schema))
        except Exception:
            if self.listener is not None:
                self.listener.model_failed(record.name, record.version, record.backend)
            raise
        if self.listener is not None:
            warm = time.perf_counter()
            self.listener.model_loaded(model, loaded - began, warm - loaded)
        return model

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)
