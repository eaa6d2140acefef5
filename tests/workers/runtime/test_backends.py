"""Backends: what runs where, int8 layer choice, no recompiles after warm-up, the gate."""

from __future__ import annotations

from pathlib import Path

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
from workers.runtime.loaded import load_model
from workers.runtime.quality import Thresholds, validate


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
