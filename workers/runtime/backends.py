"""Runtime backends: how a loaded fp32 module is turned into what actually serves.

eager (fp32), int8 (dynamic int8 of the Linear layers, per-channel weights), compiled
(torch.compile, Inductor with frozen weights; on CUDA also CUDA graphs, since the batch
buckets are static), compiled-int8 (torchao int8 dynamic activation + int8 weight, then
compiled), bf16 and compiled-bf16 (on CUDA, and on CPUs with native bf16: AVX512-BF16 or
AMX), and on CUDA fp16 and tensorrt. A backend that cannot run here fails in
`check_backend`, at registration or validation time, with what to do; never while serving.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

log = logging.getLogger(__name__)

CPU_BACKENDS = ("eager", "int8", "compiled", "compiled-int8", "bf16", "compiled-bf16")
GPU_BACKENDS = ("eager", "compiled", "fp16", "bf16", "compiled-bf16", "tensorrt")
ALL_BACKENDS = tuple(dict.fromkeys(CPU_BACKENDS + GPU_BACKENDS))
# Backends whose serving shapes are fixed: batches are padded up to these sizes.
COMPILED = ("compiled", "compiled-int8", "compiled-bf16", "tensorrt")
BUCKETS = (1, 8, 32, 128, 256)

Runner = Callable[..., torch.Tensor]


class BackendUnavailable(ValueError):
    """This backend cannot run on this machine or for this model."""


def check_backend(backend: str, device: str) -> None:
    """Raise BackendUnavailable with a clear reason if `backend` cannot serve on `device`."""
    if backend not in ALL_BACKENDS:
        raise BackendUnavailable(
            f"unknown backend {backend!r}; choose from {', '.join(ALL_BACKENDS)}"
        )
    on_gpu = device.startswith("cuda")
    if backend in ("bf16", "compiled-bf16") and not on_gpu and not cpu_has_bf16():
        raise BackendUnavailable(
            f"backend {backend!r} needs a GPU or a CPU with native bf16 (AVX512-BF16 or "
            "AMX); use int8 or compiled-int8 on this CPU"
        )
    if backend in ("fp16", "tensorrt") and not on_gpu:
        raise BackendUnavailable(
            f"backend {backend!r} needs a CUDA GPU; this worker scores on "
            f"{device}. Use eager, int8, compiled or compiled-int8 on CPU"
        )
    if backend in ("int8", "compiled-int8") and on_gpu:
        raise BackendUnavailable(
            f"backend {backend!r} is a CPU recipe; on GPU use bf16, fp16 or tensorrt"
        )
    if backend == "tensorrt" and importlib.util.find_spec("torch_tensorrt") is None:
        raise BackendUnavailable(
            "backend 'tensorrt' needs torch-tensorrt: pip install 'scoring-workers[gpu]'"
        )
    if backend == "compiled-int8" and importlib.util.find_spec("torchao") is None:
        raise BackendUnavailable("backend 'compiled-int8' needs torchao: pip install torchao")


def cpu_has_bf16() -> bool:
    """oneDNN has bf16 kernels for this CPU (without them bf16 is emulated, and slow)."""
    mkldnn = torch.backends.mkldnn
    return bool(mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bucket_for(n: int, max_batch_size: int) -> int:
    """The smallest serving shape that holds `n` rows."""
    for size in buckets(max_batch_size):
        if size >= n:
            return size
    return max_batch_size


def buckets(max_batch_size: int) -> list[int]:
    return sorted({b for b in BUCKETS if b < max_batch_size} | {max_batch_size})


def quantizable_linears(module: nn.Module, skip: list[str]) -> list[str]:
    """Linear layers worth int8: all but the output head and any named in `skip`
    (layers whose int8 error moves the top label; see the quality gate)."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    head = names[-1:] if names else []
    return [n for n in names if n not in head and not any(n.endswith(s) for s in skip)]


def apply_backend(
    module: nn.Module,
    backend: str,
    device: str,
    config: dict[str, Any],
    tensorrt: TensorRTTarget | None = None,
) -> Runner:
    """Return the callable that serves `module` (eval mode, on `device`) with `backend`.
    `tensorrt` (example inputs, buckets, engine cache) is needed for that backend only."""
    check_backend(backend, device)
    skip = list(config.get("int8_skip", []))
    if backend == "eager":
        return module
    if backend == "int8":
        return _dynamic_int8(module, skip)
    cuda = device.startswith("cuda")
    if backend == "compiled":
        return _compile(module, cuda)
    if backend == "compiled-int8":
        return _compile(_torchao_int8(module, skip), cuda)
    if backend in ("fp16", "bf16", "compiled-bf16"):
        dtype = torch.float16 if backend == "fp16" else torch.bfloat16
        return _half(module, dtype, compile_on=device if backend == "compiled-bf16" else None)
    if tensorrt is None:
        raise BackendUnavailable("backend 'tensorrt' needs example inputs and batch buckets")
    return build_tensorrt_runner(module, device, tensorrt, _torch_tensorrt_api())


def _dynamic_int8(module: nn.Module, skip: list[str]) -> nn.Module:
    """torch.ao dynamic int8 (fbgemm kernels). Deprecated upstream in favour of torchao, but
    in eager mode it is still the fastest int8 on x86 CPUs (torchao's eager int8 is slower
    than fp32 there); `compiled-int8` is the torchao path."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = {name: per_channel_dynamic_qconfig for name in quantizable_linears(module, skip)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return quantize_dynamic(module, qconfig, inplace=False)


@contextmanager
def quiet_torchao_import() -> Iterator[None]:
    """torchao registers Enums with torch's pytree as it is imported (by us, or by
    transformers when it loads a model), which torch logs a deprecation warning about on
    every start: not ours to act on, so not shown."""
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pytree_log.setLevel(level)


def _torchao_int8(module: nn.Module, skip: list[str]) -> nn.Module:
    with quiet_torchao_import():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    wanted = set(quantizable_linears(module, skip))
    quantize_(
        module,
        Int8DynamicActivationInt8WeightConfig(),
        filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in wanted,
    )
    return module


def _compile(module: nn.Module, cuda: bool = False) -> Runner:
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    inductor.freezing = True  # constant-fold the weights: the big CPU win for inference
    # One graph per batch bucket and per loaded version: well past dynamo's default of 8,
    # after which it would silently fall back to eager.
    dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
    # On CUDA a small model is launch-bound: CUDA graphs replay each bucket's kernels at once.
    mode = "reduce-overhead" if cuda else None
    return torch.compile(module, dynamic=False, mode=mode)


def _half(module: nn.Module, dtype: torch.dtype, compile_on: str | None = None) -> Runner:
    """Weights and float inputs in `dtype`; scores come back as float32."""
    module = module.to(dtype)
    runner = _compile(module, compile_on.startswith("cuda")) if compile_on else module

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        out = runner(*(t.to(dtype) if t.is_floating_point() else t for t in inputs))
        return out.float()

    return run


# --- TensorRT ------------------------------------------------------------------------
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


def _torch_tensorrt_api() -> TensorRTApi:  # pragma: no cover - needs torch-tensorrt
    return _TorchTensorRT()
