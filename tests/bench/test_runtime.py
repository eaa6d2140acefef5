"""The runtime benchmark and the GPU check script run end to end (CPU fallback here)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bench.runtime import ratios

ROOT = Path(__file__).parents[2]


def test_ratios_pick_the_fastest_backend_that_passes_the_gate() -> None:
    rows = [
        {
            "model": "minilm",
            "backend": "eager",
            "batch": 1,
            "items_per_s": 100.0,
            "speedup_vs_eager": 1.0,
            "agreement": 1.0,
            "passed_gate": True,
        },
        {
            "model": "minilm",
            "backend": "eager",
            "batch": 32,
            "items_per_s": 250.0,
            "speedup_vs_eager": 1.0,
            "agreement": 1.0,
            "passed_gate": True,
        },
        {
            "model": "minilm",
            "backend": "int8",
            "batch": 32,
            "items_per_s": 400.0,
            "speedup_vs_eager": 1.6,
            "agreement": 0.995,
            "passed_gate": True,
        },
        {
            "model": "minilm",
            "backend": "fast-but-wrong",
            "batch": 32,
            "items_per_s": 900.0,
            "speedup_vs_eager": 3.6,
            "agreement": 0.95,
            "passed_gate": False,
        },
        {
            "model": "demo",
            "backend": "int8",
            "batch": 256,
            "items_per_s": 9.0,
            "speedup_vs_eager": 2.2,
            "agreement": 1.0,
            "passed_gate": True,
        },
    ]
    assert ratios(rows) == {
        "mlp_int8_vs_eager_b256": 2.2,
        "transformer_int8_vs_eager_b32": 1.6,
        "transformer_int8_agreement": 0.995,
        "transformer_best_vs_eager_b32": 1.6,
        "transformer_best_backend": "int8",
        "transformer_b32_vs_b1": 2.5,
    }


@pytest.mark.slow
def test_gpu_check_script_falls_back_to_the_cpu_and_writes_json(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no nvidia-smi here
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no NVIDIA GPU: CPU fallback" in done.stdout
    result = json.loads((tmp_path / "runtime-cpu-fallback.json").read_text())
    assert {r["backend"] for r in result["rows"]} == {"eager", "int8"}
    assert "mlp_int8_vs_eager_b256" in result["ratios"]
    assert result["machine"]["device"] == "cpu"
