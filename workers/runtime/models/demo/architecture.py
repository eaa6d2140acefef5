"""A tabular classifier: standardise the declared float fields, then a small MLP."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class TabularMLP(nn.Module):
    """Standardisation is part of the module, so the artifact alone reproduces scores."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int, hidden: list[int], n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class MLPArchitecture:
    """config: features (ordered names), hidden (widths), labels (class names)."""

    name = "mlp"

    def build(self, config: dict[str, Any]) -> nn.Module:
        return TabularMLP(len(config["features"]), list(config["hidden"]), len(config["labels"]))

    def load_weights(self, module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        module.load_state_dict(weights, strict=True)

    def prepare(self, inputs: list[dict[str, Any]], config: dict[str, Any]) -> tuple[torch.Tensor]:
        features = config["features"]
        return (torch.tensor([[row[f] for f in features] for row in inputs], dtype=torch.float32),)

    def prepare_columns(
        self, columns: dict[str, np.ndarray], config: dict[str, Any]
    ) -> tuple[torch.Tensor]:
        features = [np.asarray(columns[f], dtype=np.float32) for f in config["features"]]
        return (torch.from_numpy(np.stack(features, axis=1)),)

    def postprocess(self, output: torch.Tensor, config: dict[str, Any]) -> list[dict[str, Any]]:
        probs = torch.softmax(output.float(), dim=-1)
        top = probs.argmax(dim=-1).tolist()
        labels = config["labels"]
        return [
            {"label": labels[i], "score": round(float(p[i]), 6)}
            for i, p in zip(top, probs.tolist(), strict=True)
        ]
