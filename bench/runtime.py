"""`scoring bench runtime`: items/s of each model × backend × batch size, side by side with
eager fp32 in the same process, plus each backend's top-label agreement with fp32.

Speeds are of the model runtime itself (prepared tensors in, scores out), the median of
interleaved rounds after warm-up, so a noisy machine slows both sides of each ratio alike.

For the MLP (the family that can be pruned) it also measures structurally pruned copies at
a few ratios (`--prune`), rows with `pruned` set: speed against the unpruned eager fp32,
agreement with it, and accuracy on the held-out rows.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

MLP_SIZES = [1, 8, 32, 128, 256]
TEXT_SIZES = [1, 8, 32, 128]
# The backends pruned copies are measured with: the eager ones (no compile wait) per device.
PRUNED_BACKENDS = ("eager", "int8", "fp16", "bf16")


def command(
    out: Path = typer.Option(Path("bench/results/runtime.json"), "--out"),
    models: str = typer.Option("demo,minilm", "--models", help="demo, minilm or both."),
    backends: str = typer.Option(None, "--backends", help="Default: every one for this device."),
    threads: int = typer.Option(None, "--threads", help="torch threads (default: torch's)."),
    rounds: int = typer.Option(7, "--rounds", help="Timed rounds per measurement."),
    quick: bool = typer.Option(False, "--quick", help="Fewer sizes and rounds (a smoke run)."),
    prune: str = typer.Option(
        "0.3,0.5,0.7", "--prune", help="Pruning ratios for the MLP ('' for none)."
    ),
) -> None:
    """Measure the model runtime; write every row and the headline ratios to OUT."""
    import torch

    from workers.runtime.backends import CPU_BACKENDS, GPU_BACKENDS
    from workers.runtime.loaded import pick_device

    if threads:
        torch.set_num_threads(threads)
    device = pick_device()
    wanted = (
        backends.split(",")
        if backends
        else list(GPU_BACKENDS if device.startswith("cuda") else CPU_BACKENDS)
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models.split(","):
            record = _record(name, Path(tmp))
            sizes = MLP_SIZES if name == "demo" else TEXT_SIZES
            if quick:
                sizes = [1, 32] if name == "minilm" else [1, 256]
            ratios_wanted = [float(r) for r in prune.split(",") if r.strip()]
            if record.architecture != "mlp":
                ratios_wanted = []
            rows += measure(
                record, wanted, device, sizes, 2 if quick else rounds, ratios_wanted, Path(tmp)
            )
            # Written after each model, so a run cut short still leaves what it measured.
            result = {"machine": machine(device), "rows": rows, "ratios": ratios(rows)}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2))
    _print(result)


def _record(name: str, tmp: Path) -> Any:
    """An in-memory ModelVersion for a freshly built artifact (no database needed)."""
    from schemas.tables import ModelVersion
    from workers.runtime.artifacts import artifact_sha256, read_manifest

    if name == "demo":
        from workers.runtime.models.demo.build import build_artifact
    else:
        from workers.runtime.models.minilm.build import build_artifact
    folder = build_artifact(tmp / name)
    manifest = read_manifest(folder)
    runtime = manifest.get("runtime", {})
    return ModelVersion(
        name=name,
        version=1,
        architecture=manifest["architecture"],
        config=manifest["config"],
        artifact_uri=str(folder),
        artifact_sha256=artifact_sha256(folder),
        input_schema=manifest["input_schema"],
        max_batch_size=int(runtime.get("max_batch_size", 256)),
    )


def measure(
    record: Any,
    backends: list[str],
    device: str,
    sizes: list[int],
    rounds: int,
    prune_ratios: list[float] | None = None,
    tmp: Path | None = None,
) -> list[dict[str, Any]]:
    """Rows for every backend (and, for each ratio in `prune_ratios`, every backend of
    PRUNED_BACKENDS on a pruned copy), all against the unpruned eager fp32."""
    from workers.runtime.loaded import load_model
    from workers.runtime.quality import held_out, predict_all

    inputs, labels = held_out(record)
    record.max_batch_size = max(sizes)
    eager = load_model(record, device, backend="eager")
    reference = predict_all(eager, inputs)
    rows: list[dict[str, Any]] = []
    for backend in backends:
        rows += _measure_one(record, backend, device, sizes, rounds, eager, reference, labels)
    runnable = [b for b in backends if b in PRUNED_BACKENDS and _runs_here(b, device)]
    for ratio in prune_ratios or []:
        pruned, hidden = _pruned_record(record, ratio, tmp or Path(tempfile.mkdtemp()))
        for backend in runnable:
            rows += _measure_one(
                pruned, backend, device, sizes, rounds, eager, reference, labels, ratio, hidden
            )
    return rows


def _runs_here(backend: str, device: str) -> bool:
    from workers.runtime.backends import BackendUnavailable, check_backend

    try:
        check_backend(backend, device)
    except BackendUnavailable:
        return False
    return True


def _measure_one(
    record: Any,
    backend: str,
    device: str,
    sizes: list[int],
    rounds: int,
    eager: Any,
    reference: list[dict[str, Any]],
    labels: list[str | None],
    pruned: float = 0.0,
    hidden: list[int] | None = None,
) -> list[dict[str, Any]]:
    from workers.runtime.backends import BackendUnavailable
    from workers.runtime.loaded import load_model
    from workers.runtime.quality import Thresholds, held_out, judge, predict_all

    inputs, _ = held_out(record)
    started = time.perf_counter()
    try:
        if backend == "eager" and not pruned:
            model = eager
        else:
            model = load_model(record, device, backend=backend)
        model.warm_up(inputs[0])
    except (BackendUnavailable, RuntimeError) as exc:
        return [{"model": record.name, "backend": backend, "pruned": pruned, "error": str(exc)}]
    prepare_s = time.perf_counter() - started
    verdict = judge(predict_all(model, inputs), reference, labels, Thresholds())
    rows = []
    for size in sizes:
        speeds = _interleaved(eager, model, inputs, size, rounds)
        row = {
            "model": record.name,
            "backend": backend,
            "batch": size,
            "items_per_s": round(speeds[1], 1),
            "eager_items_per_s": round(speeds[0], 1),
            "speedup_vs_eager": round(speeds[1] / speeds[0], 3),
            "agreement": round(verdict["agreement"], 4),
            "max_score_diff": verdict["max_score_diff"],
            "passed_gate": verdict["passed"],
            "prepare_s": round(prepare_s, 1),
            "pruned": pruned,
            "accuracy": verdict["accuracy"],
        }
        if hidden is not None:
            row["hidden"] = hidden
        rows.append(row)
    return rows


def _pruned_record(record: Any, ratio: float, tmp: Path) -> tuple[Any, list[int]]:
    """An in-memory ModelVersion of `record` with `ratio` of its hidden units removed."""
    import json

    from workers.runtime.artifacts import MANIFEST, artifact_sha256, save_artifact
    from workers.runtime.loaded import load_model
    from workers.runtime.pruning import prune_mlp

    module = load_model(record, "cpu", backend="eager").module
    smaller, hidden = prune_mlp(module, ratio)
    manifest = json.loads((Path(record.artifact_uri) / MANIFEST).read_text())
    manifest["config"] = {**manifest["config"], "hidden": hidden}
    folder = tmp / f"{record.name}-pruned-{ratio}"
    save_artifact(folder, manifest, smaller)
    pruned = record.model_copy(
        update={
            "config": manifest["config"],
            "artifact_uri": str(folder),
            "artifact_sha256": artifact_sha256(folder),
        }
    )
    return pruned, hidden


def _interleaved(
    eager: Any,
    model: Any,
    inputs: list[dict[str, Any]],
    size: int,
    rounds: int,
    min_round_s: float = 0.2,
) -> tuple[float, float]:
    """Median items/s of eager and `model` on the same prepared batch, rounds alternating."""
    import torch

    batch = model.architecture.prepare((inputs * (size // len(inputs) + 1))[:size], model.config)
    batch = tuple(t.to(model.device) for t in batch)
    runners = (eager.runner, model.runner)
    with torch.inference_mode():
        reps = []
        for run in runners:
            run(*batch)
            started = time.perf_counter()
            run(*batch)
            reps.append(max(1, int(min_round_s / max(time.perf_counter() - started, 1e-6))))
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(rounds):
            for i, run in enumerate(runners):
                started = time.perf_counter()
                for _ in range(reps[i]):
                    run(*batch)
                if model.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[i].append((time.perf_counter() - started) / reps[i])
    return size / statistics.median(times[0]), size / statistics.median(times[1])


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures the issue asks for (missing ones are left out, not guessed)."""

    def find(model: str, backend: str, batch: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in rows
                if r.get("model") == model
                and r.get("backend") == backend
                and r.get("batch") == batch
                and not r.get("pruned")
            ),
            None,
        )

    result: dict[str, Any] = {}
    if row := find("demo", "int8", 256):
        result["mlp_int8_vs_eager_b256"] = row["speedup_vs_eager"]
    if row := find("minilm", "int8", 32):
        result["transformer_int8_vs_eager_b32"] = row["speedup_vs_eager"]
        result["transformer_int8_agreement"] = row["agreement"]
    passing = [  # the gate's own verdict: agreement, score difference and accuracy
        r
        for r in rows
        if r.get("model") == "minilm"
        and r.get("batch") == 32
        and r["passed_gate"]
        and not r.get("pruned")
    ]
    if passing:
        best = max(passing, key=lambda r: r["speedup_vs_eager"])
        result["transformer_best_vs_eager_b32"] = best["speedup_vs_eager"]
        result["transformer_best_backend"] = best["backend"]
    b1, b32 = find("minilm", "eager", 1), find("minilm", "eager", 32)
    if b1 and b32:
        result["transformer_b32_vs_b1"] = round(b32["items_per_s"] / b1["items_per_s"], 3)
    if pruning := _pruning_ratios(rows):
        result["mlp_pruned"] = pruning
    return result


def _pruning_ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per pruning ratio, at the largest batch: each backend's speed against the unpruned
    eager fp32, its agreement with it and its accuracy."""
    pruned = [r for r in rows if r.get("pruned") and r.get("model") == "demo" and "batch" in r]
    if not pruned:
        return {}
    top = max(r["batch"] for r in pruned)
    out: dict[str, Any] = {}
    for r in sorted(pruned, key=lambda r: (r["pruned"], r["backend"])):
        if r["batch"] != top:
            continue
        out.setdefault(str(r["pruned"]), {"batch": top, "hidden": r.get("hidden")})[
            r["backend"]
        ] = {
            "speedup_vs_eager": r["speedup_vs_eager"],
            "agreement": r["agreement"],
            "accuracy": r.get("accuracy"),
        }
    return out


def machine(device: str) -> dict[str, Any]:
    import os

    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "model",
        "pruned",
        "backend",
        "batch",
        "items/s",
        "eager items/s",
        "vs eager",
        "agreement",
        "accuracy",
        title=f"runtime on {result['machine']['device']} "
        f"({result['machine']['torch_threads']} threads)",
    )
    for r in result["rows"]:
        pruned = f"{r['pruned']:.0%}" if r.get("pruned") else ""
        if "error" in r:
            table.add_row(r["model"], pruned, r["backend"], "", "", "", "", r["error"][:40], "")
            continue
        table.add_row(
            r["model"],
            pruned,
            r["backend"],
            str(r["batch"]),
            f"{r['items_per_s']:,.0f}",
            f"{r['eager_items_per_s']:,.0f}",
            f"{r['speedup_vs_eager']}x",
            str(r["agreement"]),
            "" if r.get("accuracy") is None else str(r["accuracy"]),
        )
    console = Console()
    console.print(table)
    console.print(json.dumps(result["ratios"], indent=2))


if __name__ == "__main__":  # `python -m bench.runtime`: needs only the model stack, no CLI deps
    typer.run(command)
