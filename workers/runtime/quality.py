"""The quality gate: a backend is compared with the fp32 eager reference on held-out data,
and the candidate with the version that serves now.

The report records, per backend, top-label agreement with eager fp32, the largest score
difference, accuracy where the held-out rows carry labels, and items per second at each
batch bucket (timed side by side with the reference). When another version is active, the
same held-out rows (the candidate's) go through the active version as it serves (its own
backend) too: each backend's agreement with it, the accuracy drop, score differences and
latency per bucket. `promote` refuses a version whose own backend failed either verdict.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
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
    """What a candidate must meet. Against eager fp32 of the same version: agreement,
    score difference, accuracy drop. Against the active version, on the candidate's
    held-out rows: accuracy may drop at most `max_accuracy_drop_vs_active`, and latency at
    the largest common batch bucket may grow at most `max_latency_ratio_vs_active` times
    (only checked when timed)."""

    min_agreement: float = 0.99
    max_score_diff: float = 0.05
    max_accuracy_drop: float = 0.01
    max_accuracy_drop_vs_active: float = 0.01
    max_latency_ratio_vs_active: float = 1.5


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
    active: ModelVersion | None = None,
) -> dict[str, Any]:
    """Gate every backend in `backends` against eager fp32 and, when `active` is another
    version, against `active` as it serves; return the full report."""
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
        # fp32's predicted labels on the held-out rows: the drift reference of predictions
        "reference_predictions": dict(Counter(str(o.get("label")) for o in ref_out)),
        "candidates": {},
    }
    live = None
    if active is not None and active.version != record.version:
        live = _run_active(record, active, device, inputs, labels, reference, timing)
        report["vs_active"] = live.section
    for backend in backends:
        result, outputs = _gate_one(
            record, backend, device, inputs, labels, reference, ref_out, thresholds, timing
        )
        if live is not None and live.outputs is not None and outputs is not None:
            result["vs_active"] = compare_with_active(
                outputs, live.outputs, labels, thresholds, _latency(result, live.section)
            )
        report["candidates"][backend] = result
    report["recommended"] = recommend(report["candidates"], record.max_batch_size)
    own = report["candidates"].get(record.backend)
    vs_eager = bool(own and own["passed"])
    vs_active = _own_vs_active(report, own)
    report["passed"] = vs_eager and vs_active is not False
    report["summary"] = {
        "backend": record.backend,
        "passed": report["passed"],
        "passed_vs_eager": vs_eager,
        "passed_vs_active": vs_active,
        "active_version": active.version if live is not None and active else None,
        "recommended": report["recommended"],
    }
    return report


def _own_vs_active(report: dict[str, Any], own: dict[str, Any] | None) -> bool | None:
    """The own backend's verdict against the active version: None when there was none to
    compare with, False when it could not be compared or was worse."""
    section = report.get("vs_active")
    if section is None:
        return None
    if not section.get("comparable"):
        return False
    verdict = (own or {}).get("vs_active")
    return bool(verdict and verdict["passed"])


@dataclass
class _ActiveRun:
    section: dict[str, Any]  # what the report keeps about the active version
    outputs: list[dict[str, Any]] | None  # its outputs on the candidate's rows, if comparable


def _run_active(
    record: ModelVersion,
    active: ModelVersion,
    device: str,
    inputs: list[dict[str, Any]],
    labels: list[str | None],
    reference: LoadedModel,
    timing: bool,
) -> _ActiveRun:
    """Score the candidate's held-out rows with the active version as it serves, and time
    it side by side with the candidate's eager fp32 at each common batch bucket."""
    section: dict[str, Any] = {
        "version": active.version,
        "sha256": active.artifact_sha256,
        "backend": active.backend,
        "comparable": True,
    }
    missing = {k: t for k, t in active.input_schema.items() if record.input_schema.get(k) != t}
    if missing:
        fields = ", ".join(f"{k} ({t})" for k, t in sorted(missing.items()))
        section.update(comparable=False, reason=f"v{record.version}'s inputs lack {fields}")
        return _ActiveRun(section, None)
    backend = active.backend
    try:
        check_backend(backend, device)
    except BackendUnavailable as exc:
        section["note"] = f"its backend cannot run here ({exc}); compared with its eager fp32"
        backend = "eager"
    section["compared_backend"] = backend
    model = load_model(active, device, backend=backend)
    model.warm_up(inputs[0])
    outputs = predict_all(model, inputs)
    section["accuracy"] = _accuracy(outputs, labels)
    if timing:
        sizes = [s for s in buckets(record.max_batch_size) if s <= active.max_batch_size]
        speeds = {s: throughput({"ref": reference, "active": model}, inputs, s) for s in sizes}
        section["items_per_s"] = {str(s): round(v["active"], 1) for s, v in speeds.items()}
        section["speedup_vs_candidate_eager"] = {
            str(s): round(v["active"] / v["ref"], 3) for s, v in speeds.items()
        }
    return _ActiveRun(section, outputs)


def _latency(result: dict[str, Any], section: dict[str, Any]) -> dict[str, float] | None:
    """Candidate latency / active latency per common bucket (both relative to the
    candidate's eager fp32, timed side by side with each): above 1 is slower."""
    own, theirs = result.get("speedup_vs_eager"), section.get("speedup_vs_candidate_eager")
    if not own or not theirs:
        return None
    return {k: round(theirs[k] / own[k], 3) for k in theirs if k in own}


def compare_with_active(
    out: list[dict[str, Any]],
    active_out: list[dict[str, Any]],
    labels: list[str | None],
    thresholds: Thresholds,
    latency_ratio: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A candidate's outputs against the active version's on the same rows."""
    pairs = list(zip(out, active_out, strict=True))
    agreement = sum(a["label"] == b["label"] for a, b in pairs) / len(pairs)
    diffs = [abs(a["score"] - b["score"]) for a, b in pairs]
    accuracy, active_accuracy = _accuracy(out, labels), _accuracy(active_out, labels)
    drop = (
        round(active_accuracy - accuracy, 5)
        if accuracy is not None and active_accuracy is not None
        else None
    )
    reasons = []
    if drop is not None and drop > thresholds.max_accuracy_drop_vs_active:
        reasons.append(
            f"accuracy {accuracy:.4f} is {drop:.4f} below the active version's "
            f"{active_accuracy:.4f} (at most {thresholds.max_accuracy_drop_vs_active})"
        )
    top_key = max(latency_ratio, key=int) if latency_ratio else None
    top = latency_ratio[top_key] if latency_ratio and top_key else None
    if top is not None and top > thresholds.max_latency_ratio_vs_active:
        reasons.append(
            f"latency at batch {top_key} is {top:.2f}x the active version's "
            f"(at most {thresholds.max_latency_ratio_vs_active}x)"
        )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "agreement": round(agreement, 5),
        "accuracy": accuracy,
        "active_accuracy": active_accuracy,
        "accuracy_drop": drop,
        "mean_score_diff": round(statistics.fmean(diffs), 6),
        "max_score_diff": round(max(diffs), 6),
        "latency_ratio": latency_ratio,
        "latency_ratio_top": top,
    }


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
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    try:
        check_backend(backend, device)
    except BackendUnavailable as exc:
        return {"passed": False, "available": False, "reasons": [str(exc)]}, None
    started = time.perf_counter()
    model = reference if backend == "eager" else load_model(record, device, backend=backend)
    model.warm_up(inputs[0])
    prepare_s = time.perf_counter() - started
    outputs = predict_all(model, inputs)
    result: dict[str, Any] = {
        "available": True,
        **judge(outputs, ref_out, labels, thresholds),
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
    return result, outputs


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
    """The fastest backend at the largest batch bucket that passed against eager fp32 and
    (where it was compared) against the active version."""
    key = str(max_batch_size)
    passing = {
        name: c
        for name, c in candidates.items()
        if c.get("passed") and (c.get("vs_active") or {}).get("passed", True)
    }
    if not passing:
        return None
    return max(passing, key=lambda n: passing[n].get("speedup_vs_eager", {}).get(key, 1.0))


def _accuracy(outputs: list[dict[str, Any]], labels: list[str | None]) -> float | None:
    pairs = [(o["label"], y) for o, y in zip(outputs, labels, strict=True) if y is not None]
    return round(sum(a == b for a, b in pairs) / len(pairs), 5) if pairs else None
