"""Backends: what runs where, int8 layer choice, no recompiles after warm-up, the gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from schemas.db import make_engine
from tests.helpers import demo_requests
from workers.runtime import registry
from workers.runtime.backends import (
    BackendUnavailable,
    bucket_for,
    check_backend,
    cpu_has_bf16,
    quantizable_linears,
)
from workers.runtime.loaded import load_model, tensorrt_target
from workers.runtime.models import get_architecture
from workers.runtime.quality import Thresholds, held_out, judge, predict_all, validate
from workers.runtime.tensorrt import (
    build_tensorrt_runner,
    trt_compile_settings,
    trt_dynamic_shapes,
    trt_engine_key,
    trt_input_specs,
)


@pytest.fixture
def demo_record(sqlite_url: str, tmp_path: Path, demo_artifact: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(sqlite_url)
    return engine, registry.register(engine, tmp_path / "store", "demo", demo_artifact)


@pytest.mark.parametrize(
    ("backend", "device", "message"),
    [
        ("tensorrt", "cpu", "needs a CUDA GPU"),
        ("fp16", "cpu", "needs a CUDA GPU"),
        ("int8", "cuda:0", "CPU recipe"),
        ("onnx", "cpu", "unknown backend 'onnx'"),
    ],
)
def test_backends_that_cannot_run_here_say_why(backend: str, device: str, message: str) -> None:
    with pytest.raises(BackendUnavailable, match=message):
        check_backend(backend, device)


def test_tensorrt_without_the_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(BackendUnavailable, match=r"scoring-workers\[gpu\]"):
        check_backend("tensorrt", "cuda:0")


def test_batches_are_padded_to_the_smallest_bucket_that_fits() -> None:
    assert [bucket_for(n, 256) for n in (1, 2, 8, 9, 33, 129, 256)] == [1, 8, 8, 32, 128, 256, 256]
    assert bucket_for(100, 64) == 64


def test_int8_leaves_the_output_head_and_named_layers_in_fp32() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    assert quantizable_linears(net, skip=[]) == ["0", "2"]
    assert quantizable_linears(net, skip=["2"]) == ["0"]


def test_int8_scores_like_fp32_on_the_demo_model(demo_record) -> None:  # type: ignore[no-untyped-def]
    _, record = demo_record
    rows = [r["inputs"] for r in demo_requests(200)]
    eager = load_model(record, backend="eager").predict(rows)
    int8 = load_model(record, backend="int8")
    assert any("quantized" in type(m).__module__ for m in int8.runner.modules())
    out = int8.predict(rows)
    assert sum(a["label"] == b["label"] for a, b in zip(eager, out, strict=True)) >= 198


def test_bf16_on_a_cpu_without_native_bf16_says_what_to_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("workers.runtime.backends.cpu_has_bf16", lambda: False)
    with pytest.raises(BackendUnavailable, match="native bf16.*use int8"):
        check_backend("compiled-bf16", "cpu")
    check_backend("bf16", "cuda:0")  # a GPU always has it


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
@pytest.mark.parametrize("backend", ["bf16", "compiled-bf16"])
def test_bf16_scores_like_fp32_and_returns_float32(demo_record, backend: str) -> None:  # type: ignore[no-untyped-def]
    _, record = demo_record
    rows = [r["inputs"] for r in demo_requests(200)]
    eager = load_model(record, backend="eager").predict(rows)
    model = load_model(record, backend=backend)
    model.warm_up(rows[0])
    out = model.predict(rows[:37])  # padded to a bucket, then trimmed
    assert len(out) == 37
    assert sum(a["label"] == b["label"] for a, b in zip(eager[:37], out, strict=True)) >= 36
    batch = model.architecture.prepare(rows[:8], model.config)
    with torch.inference_mode():
        assert model.runner(*batch).dtype == torch.float32


@pytest.mark.slow
def test_compiled_backend_never_recompiles_after_warm_up(demo_record) -> None:  # type: ignore[no-untyped-def]
    from torch._dynamo.utils import counters

    _, record = demo_record
    torch._dynamo.reset()
    model = load_model(record, backend="compiled")
    rows = [r["inputs"] for r in demo_requests(256)]
    assert model.warm_up(rows[0]) == [1, 8, 32, 128, 256]
    compiled = counters["stats"]["unique_graphs"]
    assert compiled >= 5
    for n in (3, 1, 17, 100, 256, 8, 33, 200, 2):
        assert len(model.predict(rows[:n])) == n
    assert counters["stats"]["unique_graphs"] == compiled


def test_the_gate_reports_agreement_and_recommends_a_passing_backend(demo_record) -> None:  # type: ignore[no-untyped-def]
    _, record = demo_record
    report = validate(record, ["eager", "int8", "tensorrt"], timing=False)
    assert report["passed"] and report["recommended"] in ("eager", "int8")
    int8 = report["candidates"]["int8"]
    assert int8["passed"] and int8["agreement"] >= 0.99 and int8["accuracy"] > 0.9
    assert not report["candidates"]["tensorrt"]["available"]


def test_promote_refuses_an_unvalidated_or_failed_backend(demo_record) -> None:  # type: ignore[no-untyped-def]
    engine, record = demo_record
    registry.set_backend(engine, "demo", 1, "int8")
    record = registry.get_version(engine, "demo", 1)
    assert "has not been validated" in registry.gate_problem(record)
    strict = Thresholds(min_agreement=1.01)
    registry.save_report(
        engine, "demo", 1, validate(record, ["int8"], timing=False, thresholds=strict)
    )
    problem = registry.gate_problem(registry.get_version(engine, "demo", 1))
    assert problem.startswith("backend 'int8' failed the quality gate: top-label agreement")


@pytest.mark.slow
def test_a_worker_warms_every_bucket_before_its_first_batch(demo_record) -> None:  # type: ignore[no-untyped-def]
    """The worker's model cache, not only the benchmark, runs the buckets at load time."""
    from torch._dynamo.utils import counters

    from workers.runtime.loaded import ModelCache

    engine, record = demo_record
    registry.set_backend(engine, "demo", record.version, "compiled")
    torch._dynamo.reset()
    model = ModelCache().get(registry.get_version(engine, "demo", record.version))
    compiled = counters["stats"]["unique_graphs"]
    assert model.backend == "compiled" and compiled >= 5
    rows = [r["inputs"] for r in demo_requests(256)]
    for n in (1, 9, 200, 33):
        model.predict(rows[:n])
    assert counters["stats"]["unique_graphs"] == compiled


@pytest.mark.slow
def test_compiled_int8_runs_torchao_int8_and_passes_the_gate(demo_record) -> None:  # type: ignore[no-untyped-def]
    """torchao is a declared dependency, so every CPU backend the gate can pick runs."""
    _, record = demo_record
    record.max_batch_size = 8  # two buckets to compile, not five
    inputs, labels = held_out(record)
    eager = predict_all(load_model(record, backend="eager"), inputs)
    model = load_model(record, backend="compiled-int8")
    assert model.warm_up(inputs[0]) == [1, 8]
    first = model.runner._orig_mod.net[0].weight  # torch.compile wraps the torchao module
    assert type(first).__module__.startswith("torchao"), type(first)
    verdict = judge(predict_all(model, inputs), eager, labels, Thresholds())  # the gate's
    assert verdict["passed"] and verdict["agreement"] >= 0.99, verdict


# TensorRT: everything but the calls into torch_tensorrt runs here, on the CPU.


def test_tensorrt_is_refused_without_cuda_before_anything_is_built(demo_record) -> None:  # type: ignore[no-untyped-def]
    _, record = demo_record
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        load_model(record, "cpu", backend="tensorrt")
    assert not (Path(record.artifact_uri) / "trt").exists()


def test_tensorrt_inputs_have_a_dynamic_batch_from_the_smallest_to_the_largest_bucket() -> None:
    example = (torch.zeros(1, 32, dtype=torch.long), torch.ones(1, 32, dtype=torch.long))
    ids, mask = trt_input_specs(example, (1, 8, 32, 128), torch.float16)
    assert (ids.min_shape, ids.opt_shape, ids.max_shape) == ((1, 32), (128, 32), (128, 32))
    assert ids.dtype == mask.dtype == torch.long  # token ids stay integers
    (features,) = trt_input_specs((torch.zeros(1, 30),), (1, 8, 32, 128, 256), torch.float16)
    assert features.min_shape == (1, 30) and features.max_shape == (256, 30)
    assert features.dtype == torch.float16


def test_tensorrt_export_shares_one_batch_dimension_across_inputs() -> None:
    class TwoInputs(nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return (input_ids * attention_mask).float()

    dims = trt_dynamic_shapes(TwoInputs(), 2, (1, 8, 256))
    assert list(dims) == ["input_ids", "attention_mask"]
    assert dims["input_ids"][0] is dims["attention_mask"][0]
    assert (dims["input_ids"][0].min, dims["input_ids"][0].max) == (1, 256)
    with pytest.raises(BackendUnavailable, match="takes 2 inputs"):
        trt_dynamic_shapes(TwoInputs(), 3, (1, 8))


def test_tensorrt_precision_is_asked_for_the_way_the_installed_release_takes_it() -> None:
    explicit = trt_compile_settings({"use_explicit_typing", "enabled_precisions"})
    assert explicit == {"min_block_size": 1, "use_explicit_typing": True}
    older = trt_compile_settings({"enabled_precisions", "min_block_size"})
    assert older == {"min_block_size": 1, "enabled_precisions": {torch.float16}}


def test_tensorrt_engine_key_names_the_gpu_and_library_versions() -> None:
    versions = {"tensorrt": "10.9.0", "torch_tensorrt": "2.14.0", "torch": "2.14.0"}
    base = {
        "sha256": "ab" * 32,
        "gpu": "NVIDIA H200",
        "capability": "90",
        "versions": versions,
        "buckets": (1, 8, 32, 128, 256),
    }
    key = trt_engine_key(**base)
    assert key.startswith("nvidia-h200-sm90-trt10.9.0-fp16-") and "/" not in key
    assert trt_engine_key(**base) == key  # deterministic
    others = [
        {"gpu": "NVIDIA A100-SXM4-80GB", "capability": "80"},
        {"versions": {**versions, "tensorrt": "10.10.0"}},
        {"versions": {**versions, "torch": "2.15.0"}},
        {"sha256": "cd" * 32},
        {"buckets": (1, 8, 32)},
    ]
    assert len({key, *(trt_engine_key(**{**base, **o}) for o in others)}) == 1 + len(others)


def test_tensorrt_engines_are_cached_in_the_version_folder(demo_record) -> None:  # type: ignore[no-untyped-def]
    _, record = demo_record
    target = tensorrt_target(record, get_architecture(record.architecture))
    assert target.cache_dir == Path(record.artifact_uri) / "trt"  # <store>/demo/1/trt
    assert target.buckets == (1, 8, 32, 128, 256) and target.example[0].shape == (1, 30)
    assert target.sha256 == record.artifact_sha256


class FakeTensorRT:
    """TensorRTApi without TensorRT: 'compiling' returns the exported program as a module."""

    saved: dict[str, nn.Module] = {}

    def __init__(self, gpu: str = "NVIDIA H200") -> None:
        self.compiled: list[tuple[Any, list[Any], dict[str, Any]]] = []
        self.loaded: list[Path] = []
        self._gpu = gpu

    def versions(self) -> dict[str, str]:
        return {"tensorrt": "10.9.0", "torch_tensorrt": "2.14.0", "torch": torch.__version__}

    def gpu(self, device: str) -> tuple[str, str]:
        return self._gpu, "90"

    def compile_params(self) -> set[str]:
        return {"use_explicit_typing", "min_block_size"}

    def compile(self, program: Any, inputs: list[Any], settings: dict[str, Any]) -> nn.Module:
        self.compiled.append((program, inputs, settings))
        return program.module()

    def save(self, engine: Any, path: Path, example: Any, dynamic_shapes: Any) -> None:
        path.write_bytes(b"engine " + path.name.encode())
        FakeTensorRT.saved[path.read_bytes().decode()] = engine

    def load(self, path: Path) -> nn.Module:
        self.loaded.append(path)
        return FakeTensorRT.saved[path.read_bytes().decode()]


def test_tensorrt_builds_once_then_loads_the_cached_engine(demo_record) -> None:  # type: ignore[no-untyped-def]
    _, record = demo_record
    architecture = get_architecture(record.architecture)
    target = tensorrt_target(record, architecture)
    rows = [r["inputs"] for r in demo_requests(100)]
    batch = architecture.prepare(rows, record.config)
    eager = load_model(record, backend="eager")
    with torch.inference_mode():
        expected = eager.runner(*batch)

    def fresh_module() -> nn.Module:
        return load_model(record, backend="eager").module

    first = FakeTensorRT()
    runner = build_tensorrt_runner(fresh_module(), "cpu", target, first)
    program, specs, settings = first.compiled[0]
    assert settings == {"min_block_size": 1, "use_explicit_typing": True}
    assert [(s.min_shape, s.max_shape, s.dtype) for s in specs] == [
        ((1, 30), (256, 30), torch.float16)
    ]
    assert [str(v) for v in program.range_constraints.values()] == ["VR[1, 256]"]
    engines = sorted((target.cache_dir or Path()).glob("*.pt2"))
    assert [p.stem for p in engines] == [
        trt_engine_key(
            sha256=record.artifact_sha256,
            gpu="NVIDIA H200",
            capability="90",
            versions=first.versions(),
            buckets=target.buckets,
        )
    ]
    assert engines[0].with_suffix(".json").is_file()
    with torch.inference_mode():
        out = runner(*batch)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert torch.allclose(torch.softmax(out, 1), torch.softmax(expected, 1), atol=0.02)

    second = FakeTensorRT()
    build_tensorrt_runner(fresh_module(), "cpu", target, second)
    assert second.compiled == [] and second.loaded == engines  # no rebuild

    engines[0].write_bytes(b"engine truncated")  # not what was recorded: built again
    third = FakeTensorRT()
    build_tensorrt_runner(fresh_module(), "cpu", target, third)
    assert len(third.compiled) == 1 and third.loaded == []

    other_gpu = FakeTensorRT(gpu="NVIDIA L4")  # another GPU: another engine beside it
    build_tensorrt_runner(fresh_module(), "cpu", target, other_gpu)
    assert len(other_gpu.compiled) == 1
    assert len(list((target.cache_dir or Path()).glob("*.pt2"))) == 2
