"""Model architectures a registered version may declare, by name.

An architecture turns a manifest's config into a torch module (weights come from the
artifact's safetensors file, never from pickle), and converts request inputs to tensors
and model outputs back to JSON-ready results.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Architecture(Protocol):
    """What the runtime needs from a model family; inputs are already schema-checked.

    An architecture may also define `prepare_columns(columns, config)`, taking a dict of
    columns (numpy arrays; lists for text) for bulk chunks; without it the runtime builds
    one dict per row and calls `prepare`.
    """

    name: str

    def build(self, config: dict[str, Any]) -> torch.nn.Module: ...

    def load_weights(self, module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None: ...

    def prepare(
        self, inputs: list[dict[str, Any]], config: dict[str, Any]
    ) -> tuple[torch.Tensor, ...]: ...

    def postprocess(self, output: torch.Tensor, config: dict[str, Any]) -> list[dict[str, Any]]: ...


def get_architecture(name: str) -> Architecture:
    """The architecture registered under `name`; ValueError names the known ones."""
    from workers.runtime.models.demo.architecture import MLPArchitecture

    known: dict[str, Architecture] = {"mlp": MLPArchitecture()}
    try:
        from workers.runtime.models.minilm.architecture import TextPrototypeArchitecture

        known["minilm-prototypes"] = TextPrototypeArchitecture()
    except ImportError:  # the optional `text` extra is not installed
        pass
    if name not in known:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(known))}")
    return known[name]
