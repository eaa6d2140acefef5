"""The models the e2e bench runs: the demo classifier, and the MiniLM text model when its
code is installed. Each knows how to build its artifact and make the same data for every
arm (a bulk file, wire requests, and checked inputs for the in-process runtime)."""

from __future__ import annotations

import csv
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import names as c

Inputs = list[dict[str, Any]]


@dataclass(frozen=True)
class BenchModel:
    """One model the bench can score: `rows(n, seed)` gives (id, inputs, label) triples."""

    name: str
    build_artifact: Callable[[Path, bool], Path]  # (directory, quick) -> directory
    rows: Callable[[int, int], list[tuple[str, dict[str, Any], str]]]
    model_bound: bool  # True for the transformer: the model, not the plumbing, sets the pace

    def write_csv(self, path: Path, n: int, seed: int) -> Path:
        """The bulk file: columns id, the input fields, label."""
        triples = self.rows(n, seed)
        fields = list(triples[0][1]) if triples else []
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", *fields, "label"])
            for row_id, inputs, label in triples:
                writer.writerow([row_id, *(_cell(inputs[f]) for f in fields), label])
        return path

    def requests(self, n: int, prefix: str, seed: int) -> list[dict[str, Any]]:
        """Wire requests (JSON-ready dicts) with ids `<prefix>-<i>`."""
        return [
            {"request_id": f"{prefix}-{i}", "model": self.name, "inputs": inputs}
            for i, (_, inputs, _) in enumerate(self.rows(n, seed))
        ]


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _demo_rows(n: int, seed: int) -> list[tuple[str, dict[str, Any], str]]:
    from workers.runtime.models.demo.build import LABELS, sample_rows

    names, rows, labels = sample_rows(n, seed)
    return [
        (f"row-{i}", {k: float(f"{v:.6g}") for k, v in zip(names, row, strict=True)}, LABELS[y])
        for i, (row, y) in enumerate(zip(rows, labels, strict=True))
    ]


def _build_demo(directory: Path, quick: bool) -> Path:
    """The demo artifact; --quick trains 3 epochs instead of 60 (same shape, same speed)."""
    from workers.runtime.artifacts import save_artifact
    from workers.runtime.models.demo.build import build_artifact, train

    if not quick:
        return build_artifact(directory)
    model, manifest = train(epochs=3)
    save_artifact(directory, manifest, model)
    return directory


def demo_model() -> BenchModel:
    return BenchModel(c.DEMO_MODEL, _build_demo, _demo_rows, model_bound=False)


def text_model() -> tuple[BenchModel | None, str | None]:
    """The MiniLM model, or None and why not (its code or extra is not installed)."""
    try:
        text_module = importlib.import_module("workers.runtime.models.minilm.build")
        from workers.runtime.models import get_architecture

        get_architecture("minilm-prototypes")
    except (ImportError, ValueError) as exc:
        return None, f"transformer arms skipped: {exc}"

    def rows(n: int, seed: int) -> list[tuple[str, dict[str, Any], str]]:
        pairs = text_module.sample_texts(n, seed)
        return [(f"text-{i}", {"text": t}, label) for i, (t, label) in enumerate(pairs)]

    def build(directory: Path, quick: bool) -> Path:
        return Path(text_module.build_artifact(directory))

    return BenchModel(c.TEXT_MODEL, build, rows, model_bound=True), None
