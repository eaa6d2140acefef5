"""The quality gate: a backend is compared with the fp32 eager reference on held-out data.

The report records top-label agreement, the largest score difference, accuracy where the
held-out rows carry labels, and items per second at each batch bucket (timed side by side
with the reference). `promote` refuses a version whose own backend failed.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from schemas.tables import ModelVersion, utcnow
from workers.runtime.artifacts import MANIFEST
from workers.runtime.backends import BackendUnavailable, buckets, check_backend
from workers.runtime.loaded import LoadedModel, load_model


@dataclass(frozen=True)
class Thresholds:
    min_agreement: float = 0.99
    max_score_diff: float = 0.05
    max_accuracy_drop: float = 0.01


def held_out(record: ModelVersion) -> tuple[list[dict[str, Any]], list[str | None]]:
    """The validation rows shipped in the artifact's manifest (inputs and labels)."""
    manifest = json.loads((Path(record.artifact_uri) / MANIFEST).read_text())
    rows = manifest.get("validation_set") or []
    if not rows:
        raise ValueError(f"{record.name} v{record.version}: the artifact has no validation_set")
    return [r["inputs"] for r in rows], [r.get("label") for r in rows]


def predict_all(model: LoadedModel, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    step = model.max_batch_size
    return [out for i in range(0, len(inputs), step) for out in model.predict(inputs[i : i + step])]


def throughput(
    models: dict[str, LoadedModel],
    inputs: list[dict[str, Any]],
    size: int,
    rounds: int = 5,
    min_round_s: float = 0.05,
) -> dict[str, float]:
    """Items/s of each model at batch `size`: medians of interleaved rounds (drift-fair)."""
    batch = (inputs * (size // len(inputs) + 1))[:size]
    repeats: dict[str, int] = {}
    for name, model in models.items():
        started = time.perf_counter()
        model.predict(batch)
        one = max(time.perf_counter() - started, 1e-6)
        repeats[name] = max(1, int(min_round_s / one))
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            started = time.perf_counter()
            for _ in range(repeats[name]):
                model.predict(batch)
            times[name].append((time.perf_counter() - started) / repeats[name])
    return {name: size / statistics.median(ts) for name, ts in times.items()}


def validate(
    record: ModelVersion,
    backends: list[str],
    device: str = "cpu",
    thresholds: Thresholds = Thresholds(),
    timing: bool = True,
) -> dict[str, Any]:
    """Gate every backend in `backends` against eager fp32; return the full report."""
    inputs, labels = held_out(record)
    reference = load_model(record, device, backend="eager")
    ref_out = predict_all(reference, inputs)
    report: dict[str, Any] = {
        "at": utcnow().isoformat(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "rows": len(inputs),
        "thresholds": thresholds.__dict__,
        "reference_accuracy": _accuracy(ref_out, labels),
        "candidates": {},
    }
    for backend in backends:
        report["candidates"][backend] = _gate_one(
            record, backend, device, inputs, labels, reference, ref_out, thresholds, timing
        )
    report["recommended"] = recommend(report["candidates"], record.max_batch_size)
    own = report["candidates"].get(record.backend)
    report["passed"] = bool(own and own["passed"])
    report["summary"] = {
        "backend": record.backend,
        "passed": report["passed"],
        "recommended": report["recommended"],
    }
    return report


def _gate_one(
    record: ModelVersion,
    backend: str,
    device: str,
    inputs: list[dict[str, Any]],
    labels: list[str | None],
    reference: LoadedModel,
    ref_out: list[dict[str, Any]],
    thresholds: Thresholds,
    timing: bool,
) -> dict[str, Any]:
    try:
        check_backend(backend, device)
    except BackendUnavailable as exc:
        return {"passed": False, "available": False, "reasons": [str(exc)]}
    started = time.perf_counter()
    model = reference if backend == "eager" else load_model(record, device, backend=backend)
    model.warm_up(inputs[0])
    prepare_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "available": True,
        **judge(predict_all(model, inputs), ref_out, labels, thresholds),
        "prepare_s": round(prepare_s, 2),
    }
    if timing:
        speeds = {
            size: throughput({"ref": reference, "cand": model}, inputs, size)
            for size in buckets(record.max_batch_size)
        }
        result["items_per_s"] = {str(k): round(v["cand"], 1) for k, v in speeds.items()}
        result["speedup_vs_eager"] = {
            str(k): round(v["cand"] / v["ref"], 3) for k, v in speeds.items()
        }
    return result


def judge(
    out: list[dict[str, Any]],
    ref_out: list[dict[str, Any]],
    labels: list[str | None],
    thresholds: Thresholds,
) -> dict[str, Any]:
    """A backend's outputs against eager fp32's on the same rows: the gate's verdict."""
    agreement = sum(a["label"] == b["label"] for a, b in zip(out, ref_out, strict=True)) / len(out)
    diff = max(abs(a["score"] - b["score"]) for a, b in zip(out, ref_out, strict=True))
    accuracy, ref_accuracy = _accuracy(out, labels), _accuracy(ref_out, labels)
    reasons = []
    if agreement < thresholds.min_agreement:
        reasons.append(f"top-label agreement {agreement:.4f} < {thresholds.min_agreement}")
    if diff > thresholds.max_score_diff:
        reasons.append(f"max score difference {diff:.4f} > {thresholds.max_score_diff}")
    if (
        accuracy is not None
        and ref_accuracy is not None
        and (ref_accuracy - accuracy > thresholds.max_accuracy_drop)
    ):
        reasons.append(f"accuracy {accuracy:.4f} is {ref_accuracy - accuracy:.4f} below fp32")
    return {
        "passed": not reasons,
        "reasons": reasons,
        "agreement": round(agreement, 5),
        "max_score_diff": round(diff, 6),
        "accuracy": accuracy,
    }


def recommend(candidates: dict[str, dict[str, Any]], max_batch_size: int) -> str | None:
    """The fastest passing backend at the largest batch bucket."""
    key = str(max_batch_size)
    passing = {name: c for name, c in candidates.items() if c.get("passed")}
    if not passing:
        return None
    return max(passing, key=lambda n: passing[n].get("speedup_vs_eager", {}).get(key, 1.0))


def _accuracy(outputs: list[dict[str, Any]], labels: list[str | None]) -> float | None:
    pairs = [(o["label"], y) for o, y in zip(outputs, labels, strict=True) if y is not None]
    return round(sum(a == b for a, b in pairs) / len(pairs), 5) if pairs else None
