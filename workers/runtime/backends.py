"""Runtime backends: how a loaded fp32 module is turned into what actually serves.

eager (fp32), int8 (dynamic int8 of the Linear layers, per-channel weights), compiled
(torch.compile, Inductor with frozen weights; on CUDA also CUDA graphs, since the batch
buckets are static), compiled-int8 (torchao int8 dynamic activation + int8 weight, then
compiled), bf16 and compiled-bf16 (on CUDA, and on CPUs with native bf16: AVX512-BF16 or
AMX), and on CUDA fp16 and tensorrt. A backend that cannot run here fails in
`check_backend`, at registration or validation time, with what to do; never while serving.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from workers.runtime.tensorrt import TensorRTTarget

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
    from workers.runtime.tensorrt import build_tensorrt_runner, torch_tensorrt_api

    return build_tensorrt_runner(module, device, tensorrt, torch_tensorrt_api())


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
