"""The TensorRT backend: building, caching and loading one engine per version and GPU.

Everything but the calls into torch_tensorrt (`_TorchTensorRT`) is a plain function,
testable on a CPU: the input specs, the dynamic batch dimension, the compile settings
the installed torch-tensorrt accepts, and the engine cache's key and files.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from workers.runtime.backends import BackendUnavailable, Runner

log = logging.getLogger(__name__)

# One fp16 engine per version and GPU with a dynamic batch dimension from the smallest to
# the largest bucket (optimised for the largest): torch.export with one batch Dim shared by
# every input, then torch_tensorrt.dynamo.compile with min/opt/max input shapes. An engine
# is valid only for the GPU and the libraries that built it, so it is cached in the model
# store next to the artifact, <store>/<name>/<version>/trt/<key>.pt2, the key naming the
# artifact's sha256, the GPU and its compute capability, and the TensorRT, torch-tensorrt
# and torch versions. (`.pt2`: what torch.export's archive format expects of a file name.)
# Everything but the calls into torch_tensorrt is a plain function, testable on a CPU.

TRT_PRECISION = torch.float16
TRT_DIR = "trt"


@dataclass(frozen=True)
class TensorRTTarget:
    """What building a TensorRT engine needs beyond the module."""

    example: tuple[torch.Tensor, ...]  # one prepared batch; sizes past dim 0 are fixed
    buckets: tuple[int, ...]  # the batch sizes serving uses (padded up to)
    cache_dir: Path | None  # <artifact>/trt; None: build every time, keep nothing
    sha256: str  # the artifact's


@dataclass(frozen=True)
class InputSpec:
    """One input of the engine: torch_tensorrt.Input(min_shape, opt_shape, max_shape, dtype)."""

    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    dtype: torch.dtype


def trt_input_specs(
    example: tuple[torch.Tensor, ...], buckets: tuple[int, ...], precision: torch.dtype
) -> list[InputSpec]:
    """Dynamic batch between the smallest and largest bucket, optimised for the largest;
    float inputs in `precision`, integer ones (token ids, masks) as they are."""
    low, high = min(buckets), max(buckets)
    specs = []
    for tensor in example:
        rest = tuple(int(d) for d in tensor.shape[1:])
        dtype = precision if tensor.is_floating_point() else tensor.dtype
        specs.append(InputSpec((low, *rest), (high, *rest), (high, *rest), dtype))
    return specs


def trt_dynamic_shapes(
    module: nn.Module, n_inputs: int, buckets: tuple[int, ...]
) -> dict[str, dict[int, Any]]:
    """torch.export's `dynamic_shapes`: dim 0 of every input is one shared batch Dim (the
    inputs of a batch always have the same number of rows)."""
    names = list(inspect.signature(module.forward).parameters)[:n_inputs]
    if len(names) != n_inputs:
        raise BackendUnavailable(f"forward() takes {len(names)} inputs, the batch has {n_inputs}")
    batch = torch.export.Dim("batch", min=min(buckets), max=max(buckets))
    return {name: {0: batch} for name in names}


def trt_compile_settings(accepted: set[str]) -> dict[str, Any]:
    """Keyword arguments for torch_tensorrt.dynamo.compile, given the ones it accepts.

    The module and its float inputs are fp16 already. Releases with explicit typing take
    the dtypes as the precision (`enabled_precisions` is deprecated there, and refused
    together with it by some); older ones need fp16 enabled to pick fp16 kernels.
    """
    settings: dict[str, Any] = {"min_block_size": 1}
    if "use_explicit_typing" in accepted:
        settings["use_explicit_typing"] = True
    else:
        settings["enabled_precisions"] = {TRT_PRECISION}
    return settings


def trt_engine_key(
    *,
    sha256: str,
    gpu: str,
    capability: str,
    versions: dict[str, str],
    buckets: tuple[int, ...],
    precision: str = "fp16",
) -> str:
    """The cache key of an engine: readable GPU, capability and TensorRT version, then a
    digest of everything the engine depends on."""
    fields = {
        "sha256": sha256,
        "gpu": gpu,
        "capability": capability,
        "versions": dict(sorted(versions.items())),
        "buckets": sorted(buckets),
        "precision": precision,
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "gpu"
    trt = re.sub(r"[^0-9A-Za-z.]+", "-", versions.get("tensorrt", "unknown"))
    return f"{slug}-sm{capability}-trt{trt}-{precision}-{digest}"


def trt_engine_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}.pt2"


class TensorRTApi(Protocol):
    """The few calls into torch_tensorrt (and the GPU) the backend makes."""

    def versions(self) -> dict[str, str]: ...

    def gpu(self, device: str) -> tuple[str, str]: ...  # (name, compute capability "90")

    def compile_params(self) -> set[str]: ...

    def compile(
        self, program: Any, inputs: list[InputSpec], settings: dict[str, Any]
    ) -> Callable[..., torch.Tensor]: ...

    def save(
        self,
        engine: Any,
        path: Path,
        example: tuple[torch.Tensor, ...],
        dynamic_shapes: dict[str, dict[int, Any]],
    ) -> None: ...

    def load(self, path: Path) -> Callable[..., torch.Tensor]: ...


def build_tensorrt_runner(
    module: nn.Module, device: str, target: TensorRTTarget, api: TensorRTApi
) -> Runner:
    """The cached engine for this version, GPU and libraries, else a new one (kept in the
    cache); scores come back as float32."""
    module = module.to(TRT_PRECISION)
    high = max(target.buckets)
    example = tuple(
        _rows(t, high).to(device, TRT_PRECISION if t.is_floating_point() else t.dtype)
        for t in target.example
    )
    gpu, capability = api.gpu(device)
    key = trt_engine_key(
        sha256=target.sha256,
        gpu=gpu,
        capability=capability,
        versions=api.versions(),
        buckets=target.buckets,
    )
    path = trt_engine_path(target.cache_dir, key) if target.cache_dir else None
    engine = _load_engine(api, path) if path else None
    if engine is None:
        dims = trt_dynamic_shapes(module, len(example), target.buckets)
        program = torch.export.export(module, example, dynamic_shapes=dims, strict=False)
        specs = trt_input_specs(example, target.buckets, TRT_PRECISION)
        engine = api.compile(program, specs, trt_compile_settings(api.compile_params()))
        if path:
            _save_engine(api, engine, path, example, dims, key)

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        out = engine(*(t.to(TRT_PRECISION) if t.is_floating_point() else t for t in inputs))
        return out.float()

    return run


def _rows(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """`n` rows: the example's rows repeated (export must not see a batch of 1, which it
    would specialise on)."""
    reps = -(-n // tensor.shape[0])
    return tensor.repeat(reps, *([1] * (tensor.dim() - 1)))[:n].contiguous()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_engine(api: TensorRTApi, path: Path) -> Callable[..., torch.Tensor] | None:
    """A cached engine whose file matches the sha256 recorded beside it when it was built;
    None (rebuild) when there is none or it does not match."""
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        return None
    try:
        expected = json.loads(sidecar.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        expected = None
    if expected != _file_sha256(path):
        log.warning("TensorRT engine %s does not match its sha256: building it again", path)
        return None
    try:
        return api.load(path)
    except Exception as exc:  # a cache that cannot be read is rebuilt, never fatal
        log.warning("could not load the TensorRT engine %s (%s): building it again", path, exc)
        return None


def _save_engine(
    api: TensorRTApi,
    engine: Any,
    path: Path,
    example: tuple[torch.Tensor, ...],
    dims: dict[str, dict[int, Any]],
    key: str,
) -> None:
    """Write the engine and its sidecar atomically: a worker starting beside this one
    finds the whole engine or none."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.pt2")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        api.save(engine, tmp, example, dims)
        meta = {"key": key, "sha256": _file_sha256(tmp), "versions": api.versions()}
        sidecar_tmp = tmp.with_suffix(".json")
        sidecar_tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, path)
        os.replace(sidecar_tmp, path.with_suffix(".json"))
    except Exception as exc:  # a store that cannot keep it still serves; it rebuilds next time
        log.warning("could not cache the TensorRT engine in %s: %s", path.parent, exc)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".json").unlink(missing_ok=True)


class _TorchTensorRT:  # pragma: no cover - needs CUDA and torch-tensorrt
    """TensorRTApi on the installed torch_tensorrt."""

    def __init__(self) -> None:
        import torch_tensorrt

        self.trt = torch_tensorrt

    def versions(self) -> dict[str, str]:
        import tensorrt

        return {
            "tensorrt": str(tensorrt.__version__),
            "torch_tensorrt": str(self.trt.__version__),
            "torch": torch.__version__,
        }

    def gpu(self, device: str) -> tuple[str, str]:
        major, minor = torch.cuda.get_device_capability(device)
        return torch.cuda.get_device_name(device), f"{major}{minor}"

    def compile_params(self) -> set[str]:
        return set(inspect.signature(self.trt.dynamo.compile).parameters)

    def compile(
        self, program: Any, inputs: list[InputSpec], settings: dict[str, Any]
    ) -> Callable[..., torch.Tensor]:
        specs = [
            self.trt.Input(
                min_shape=s.min_shape, opt_shape=s.opt_shape, max_shape=s.max_shape, dtype=s.dtype
            )
            for s in inputs
        ]
        compiled: Callable[..., torch.Tensor] = self.trt.dynamo.compile(
            program, arg_inputs=specs, **settings
        )
        return compiled

    def save(
        self,
        engine: Any,
        path: Path,
        example: tuple[torch.Tensor, ...],
        dynamic_shapes: dict[str, dict[int, Any]],
    ) -> None:
        self.trt.save(engine, str(path), arg_inputs=list(example), dynamic_shapes=dynamic_shapes)

    def load(self, path: Path) -> Callable[..., torch.Tensor]:
        module: Callable[..., torch.Tensor] = self.trt.load(str(path)).module()
        return module


def torch_tensorrt_api() -> TensorRTApi:  # pragma: no cover - needs torch-tensorrt
    return _TorchTensorRT()
