"""bench/compare.py: CI's check of a smoke benchmark's ratios against the stored baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.compare import compare, main

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, ratios: dict[str, object]) -> Path:
    path.write_text(json.dumps({"machine": {}, "rows": [], "ratios": ratios}))
    return path


def test_within_tolerance_passes_and_below_fails() -> None:
    baseline = {"mlp_int8_vs_eager_b256": 3.0, "transformer_best_backend": "compiled-bf16"}
    ok = compare(baseline, {"mlp_int8_vs_eager_b256": 1.6}, tolerance=0.5)
    assert [(v.key, v.passed, v.floor) for v in ok] == [("mlp_int8_vs_eager_b256", True, 1.5)]
    bad = compare(baseline, {"mlp_int8_vs_eager_b256": 1.4}, tolerance=0.5)
    assert not bad[0].passed


def test_text_values_are_shown_not_judged() -> None:
    verdicts = compare(
        {"a": 2.0, "best": "int8"}, {"a": 2.0, "best": "compiled-bf16"}, tolerance=0.1
    )
    assert all(v.passed for v in verdicts)
    assert next(v for v in verdicts if v.key == "best").floor is None


def test_booleans_are_not_numbers() -> None:
    with pytest.raises(ValueError, match="nothing was compared"):
        compare({"flag": True}, {"flag": False}, tolerance=0.1)


def test_named_keys_must_be_in_both() -> None:
    verdicts = compare({"a": 2.0}, {"b": 2.0}, tolerance=0.1, keys=["a"])
    assert [(v.key, v.passed) for v in verdicts] == [("a", False)]


def test_nothing_in_common_is_an_error() -> None:
    with pytest.raises(ValueError):
        compare({"a": 1.0}, {"b": 1.0}, tolerance=0.1)


def test_tolerance_is_a_fraction() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        compare({"a": 1.0}, {"a": 1.0}, tolerance=1.5)


def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write(tmp_path / "base.json", {"r": 3.0})
    assert (
        main([str(base), str(write(tmp_path / "ok.json", {"r": 2.9})), "--tolerance", "0.1"]) == 0
    )
    assert main([str(base), str(write(tmp_path / "bad.json", {"r": 1.0}))]) == 1
    assert "REGRESSED" in capsys.readouterr().out
    assert main([str(base), str(write(tmp_path / "none.json", {"x": 1.0}))]) == 2
    (tmp_path / "broken.json").write_text("{}")
    assert main([str(base), str(tmp_path / "broken.json")]) == 2


def test_the_stored_baseline_holds_against_itself() -> None:
    """bench/results/runtime.json is CI's baseline: it must have numeric ratios."""
    baseline = ROOT / "bench" / "results" / "runtime.json"
    assert main([str(baseline), str(baseline), "--tolerance", "0"]) == 0
    ratios = json.loads(baseline.read_text())["ratios"]
    # The smoke run (`--quick --models demo`) produces this one; CI compares it.
    assert isinstance(ratios["mlp_int8_vs_eager_b256"], float)


def test_runs_as_a_script(tmp_path: Path) -> None:
    """CI runs `python bench/compare.py ...`, not the module."""
    base = write(tmp_path / "base.json", {"r": 3.0})
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare.py"), str(base), str(base)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
