"""The gate against the active version: same held-out rows (the candidate's), accuracy,
agreement, score differences and latency per bucket; and what promote then refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.db import make_engine
from workers.runtime import pruning, registry
from workers.runtime.quality import (
    Thresholds,
    compare_with_active,
    held_out,
    recommend,
    validate,
)


@pytest.fixture
def two_versions(sqlite_url: str, tmp_path: Path, demo_artifact: Path, demo_artifact_v2: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(sqlite_url)
    store = tmp_path / "store"
    v1 = registry.register(engine, store, "demo", demo_artifact)
    v2 = registry.register(engine, store, "demo", demo_artifact_v2)
    return engine, store, v1, v2


def _out(labels: str, score: float = 0.9) -> list[dict[str, object]]:
    return [{"label": y, "score": score} for y in labels]


def test_comparison_with_the_active_version_flags_an_accuracy_drop() -> None:
    truth: list[str | None] = list("aaaabbbbbb")
    active = _out("aaaabbbbbb")  # all right
    candidate = _out("aaaabbbbaa", score=0.8)  # two wrong
    verdict = compare_with_active(candidate, active, truth, Thresholds())
    assert verdict["agreement"] == 0.8 and verdict["accuracy_drop"] == 0.2
    assert verdict["mean_score_diff"] == pytest.approx(0.1)
    assert not verdict["passed"]
    assert verdict["reasons"] == [
        "accuracy 0.8000 is 0.2000 below the active version's 1.0000 (at most 0.01)"
    ]
    lenient = Thresholds(max_accuracy_drop_vs_active=0.25)
    assert compare_with_active(candidate, active, truth, lenient)["passed"]


def test_comparison_with_the_active_version_flags_latency_at_the_largest_bucket() -> None:
    truth: list[str | None] = list("ab")
    same = _out("ab")
    slow = compare_with_active(same, same, truth, Thresholds(), {"1": 0.9, "256": 2.0})
    assert slow["latency_ratio_top"] == 2.0 and not slow["passed"]
    assert slow["reasons"] == ["latency at batch 256 is 2.00x the active version's (at most 1.5x)"]
    # only the largest bucket counts (small batches are latency-bound and noisy)
    assert compare_with_active(same, same, truth, Thresholds(), {"1": 3.0, "256": 1.1})["passed"]
    assert compare_with_active(same, same, truth, Thresholds(), None)["latency_ratio_top"] is None


def test_validate_compares_the_candidate_with_the_active_version_on_its_own_rows(
    two_versions,  # type: ignore[no-untyped-def]
) -> None:
    _, _, v1, v2 = two_versions
    report = validate(v2, ["eager", "int8"], timing=True, active=v1)
    section = report["vs_active"]
    assert section["version"] == 1 and section["comparable"] and section["backend"] == "eager"
    assert set(section["items_per_s"]) == {"1", "8", "32", "128", "256"}
    assert report["rows"] == len(held_out(v2)[0])  # the candidate's held-out rows
    eager = report["candidates"]["eager"]["vs_active"]
    assert eager["agreement"] > 0.95 and abs(eager["accuracy_drop"]) <= 0.01
    assert set(eager["latency_ratio"]) == set(section["items_per_s"])
    assert eager["passed"], eager
    assert report["passed"] and report["summary"]["passed_vs_active"] is True
    assert report["summary"]["active_version"] == 1


def test_validating_the_active_version_itself_compares_with_nothing(two_versions) -> None:  # type: ignore[no-untyped-def]
    _, _, v1, _ = two_versions
    report = validate(v1, ["eager"], timing=False, active=v1)
    assert "vs_active" not in report and report["summary"]["passed_vs_active"] is None
    assert report["passed"]


def test_a_version_whose_inputs_lack_an_active_field_is_not_comparable(two_versions) -> None:  # type: ignore[no-untyped-def]
    engine, _, v1, v2 = two_versions
    wider = v1.model_copy(update={"input_schema": {**v1.input_schema, "age": "float"}})
    report = validate(v2, ["eager"], timing=False, active=wider)
    assert report["vs_active"] == {
        "version": 1,
        "sha256": v1.artifact_sha256,
        "backend": "eager",
        "comparable": False,
        "reason": "v2's inputs lack age (float)",
    }
    assert not report["passed"] and report["summary"]["passed_vs_active"] is False
    registry.save_report(engine, "demo", 2, report)
    v2 = registry.get_version(engine, "demo", 2)
    summary = registry.gate_summary(v2) or {}
    assert summary["passed"] is False and summary["vs_active"]["comparable"] is False
    assert registry.promotion_problem(engine, v2) == (
        "v2 cannot be compared with active v1: v2's inputs lack age (float)"
    )


def test_recommend_skips_a_backend_worse_than_the_active_version() -> None:
    candidates = {
        "eager": {"passed": True, "speedup_vs_eager": {"256": 1.0}, "vs_active": {"passed": True}},
        "int8": {"passed": True, "speedup_vs_eager": {"256": 3.0}, "vs_active": {"passed": False}},
    }
    assert recommend(candidates, 256) == "eager"


def test_promotion_needs_a_report_eager_too_and_one_against_the_active_version(
    two_versions,  # type: ignore[no-untyped-def]
) -> None:
    engine, store, v1, v2 = two_versions
    assert v2.backend == "eager"
    problem = registry.promotion_problem(engine, v2)
    assert problem == (
        "demo v2 (eager) has not been validated: run `scoring models validate demo 2`"
    )
    registry.save_report(engine, "demo", 2, validate(v2, ["eager"], timing=False))  # alone
    problem = registry.promotion_problem(engine, registry.get_version(engine, "demo", 2))
    assert problem == (
        "v2 was validated against no active version, but v1 is active now: "
        "run `scoring models validate demo 2` again"
    )
    registry.save_report(engine, "demo", 2, validate(v2, ["eager"], timing=False, active=v1))
    v2 = registry.get_version(engine, "demo", 2)
    assert registry.promotion_problem(engine, v2) is None

    worse, _ = pruning.derive(engine, store, "demo", 1, 0.9)  # 51 of 512 units left
    registry.save_report(engine, "demo", 3, validate(worse, ["eager"], timing=False, active=v1))
    worse = registry.get_version(engine, "demo", 3)
    problem = registry.promotion_problem(engine, worse) or ""
    assert problem.startswith("v3 (eager) is worse than active v1: accuracy "), problem
    registry.promote(engine, "demo", 2)
    problem = registry.promotion_problem(engine, worse) or ""
    assert "validated against v1, but v2 is active now" in problem
