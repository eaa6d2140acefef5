"""Structured pruning: the layers really shrink, the smaller module computes what the
masked one did, and a derived version is registered with where it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from schemas.db import make_engine
from tests.helpers import demo_requests
from workers.runtime import pruning, registry
from workers.runtime.artifacts import MANIFEST
from workers.runtime.loaded import load_model
from workers.runtime.models.demo.architecture import TabularMLP
from workers.runtime.pruning import PruningError, prune_mlp


def _mlp(seed: int = 0) -> TabularMLP:
    torch.manual_seed(seed)
    model = TabularMLP(6, [16, 12], 3).eval()
    for layer in model.net:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.bias, std=0.5)  # some removed units carry a live bias
    return model


def _masked(model: TabularMLP, ratio: float) -> TabularMLP:
    """The same pruning left as masks (zeroed rows, nothing removed): the reference."""
    masked = _mlp()
    masked.load_state_dict(model.state_dict())
    linears = [m for m in masked.net if isinstance(m, nn.Linear)][:-1]
    for layer in linears:
        prune.ln_structured(layer, "weight", amount=ratio, n=2, dim=0)
        prune.remove(layer, "weight")
    return masked


def test_pruning_removes_units_and_keeps_the_outputs_of_the_masked_model() -> None:
    model = _mlp()
    smaller, hidden = prune_mlp(model, 0.5)
    assert hidden == [8, 6]
    shapes = [tuple(m.weight.shape) for m in smaller.net if isinstance(m, nn.Linear)]
    assert shapes == [(8, 6), (6, 8), (3, 6)]  # rows of layer i, columns of layer i+1
    x = torch.randn(64, 6)
    with torch.no_grad():
        assert torch.allclose(smaller(x), _masked(model, 0.5)(x), atol=1e-5)
        assert not torch.allclose(smaller(x), model(x), atol=1e-3)  # it did change
    assert [m.weight.shape[0] for m in model.net if isinstance(m, nn.Linear)] == [16, 12, 3]


def test_the_units_removed_are_those_with_the_smallest_weights() -> None:
    model = _mlp()
    first = model.net[0]
    assert isinstance(first, nn.Linear)
    norms = first.weight.detach().norm(dim=1)
    smaller, _ = prune_mlp(model, 0.25)
    kept = smaller.net[0].weight.detach().norm(dim=1)
    assert sorted(kept.tolist()) == pytest.approx(sorted(norms.tolist())[4:])


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_a_ratio_outside_zero_to_one_is_refused(ratio: float) -> None:
    with pytest.raises(PruningError, match="0 < r < 1"):
        prune_mlp(_mlp(), ratio)


def test_derive_registers_a_smaller_staged_version_that_says_where_it_came_from(
    sqlite_url: str, tmp_path: Path, demo_artifact: Path
) -> None:
    engine = make_engine(sqlite_url)
    store = tmp_path / "store"
    source = registry.register(engine, store, "demo", demo_artifact)
    record, made = pruning.derive(engine, store, "demo", 1, 0.3, int8=True)
    assert (record.version, record.status, record.backend) == (2, "staged", "int8")
    assert record.config["hidden"] == [358, 358] == made["hidden_after"]
    training = registry.get_version(engine, "demo", 2).training or {}
    assert training["derived_from"] == {
        "name": "demo",
        "version": 1,
        "sha256": source.artifact_sha256,
    }
    assert training["prune_ratio"] == 0.3 and training["int8"] is True
    assert training["parameters_after"] < training["parameters_before"] / 1.9
    assert training["data"] == (source.training or {})["data"]
    manifest = json.loads((Path(record.artifact_uri) / MANIFEST).read_text())
    original = json.loads((demo_artifact / MANIFEST).read_text())
    assert manifest["validation_set"] == original["validation_set"]  # the same gate rows
    rows = [r["inputs"] for r in demo_requests(300)]
    before = load_model(source, backend="eager").predict(rows[:256])
    after = load_model(record, backend="eager").predict(rows[:256])
    same = sum(a["label"] == b["label"] for a, b in zip(before, after, strict=True))
    assert same >= 250
    with pytest.raises(PruningError, match="0 < r < 1"):
        pruning.derive(engine, store, "demo", 1, 1.0)
    with pytest.raises(registry.RegistryError, match="no version 7"):
        pruning.derive(engine, store, "demo", 7, 0.3)


def test_derive_says_pruning_is_for_the_mlp_family_only(
    sqlite_url: str, tmp_path: Path, demo_artifact: Path
) -> None:
    engine = make_engine(sqlite_url)
    text = tmp_path / "text"
    text.mkdir()
    manifest = json.loads((demo_artifact / MANIFEST).read_text())
    manifest = {**manifest, "architecture": "minilm-prototypes"}
    (text / MANIFEST).write_text(json.dumps(manifest))
    (text / "weights.safetensors").write_bytes((demo_artifact / "weights.safetensors").read_bytes())
    registry.register(engine, tmp_path / "store", "minilm", text)
    with pytest.raises(PruningError, match="supports the mlp family only"):
        pruning.derive(engine, tmp_path / "store", "minilm", 1, 0.3)
