"""Worker processes are planned per GPU or per CPU share, and refuse what cannot run."""

from __future__ import annotations

import pytest

from workers import launcher


def test_cpu_workers_split_the_cores_between_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCORING_TORCH_THREADS", raising=False)
    plans = launcher.plan_workers(cpu=2, gpus=None, cores=8)
    assert [p["SCORING_WORKER_NAME"] for p in plans] == ["cpu0", "cpu1"]
    assert {p["SCORING_TORCH_THREADS"] for p in plans} == {"4"}
    assert {p["CUDA_VISIBLE_DEVICES"] for p in plans} == {""}


def test_gpu_workers_are_pinned_one_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "visible_gpus", lambda: ["0", "1", "2"])
    plans = launcher.plan_workers(cpu=None, gpus="0,2")
    assert plans == [
        {"SCORING_WORKER_NAME": "gpu0", "CUDA_VISIBLE_DEVICES": "0"},
        {"SCORING_WORKER_NAME": "gpu2", "CUDA_VISIBLE_DEVICES": "2"},
    ]


def test_asking_for_gpus_without_any_fails_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "visible_gpus", lambda: [])
    with pytest.raises(launcher.LaunchError, match=r"GPU\(s\) 0 not found .*none.*--cpu N"):
        launcher.plan_workers(cpu=None, gpus="0")


def test_by_default_one_worker_per_gpu_or_one_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "visible_gpus", lambda: ["0", "1"])
    assert [p["SCORING_WORKER_NAME"] for p in launcher.plan_workers(None, None)] == [
        "gpu0",
        "gpu1",
    ]
    assert [p["SCORING_WORKER_NAME"] for p in launcher.plan_workers(2, None)] == ["cpu0", "cpu1"]
    monkeypatch.setattr(launcher, "visible_gpus", lambda: [])
    plans = launcher.plan_workers(None, None, cores=2)
    assert [(p["SCORING_WORKER_NAME"], p["CUDA_VISIBLE_DEVICES"]) for p in plans] == [("cpu0", "")]
