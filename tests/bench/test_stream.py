"""The stream bench's own logic: how it searches for a sustained rate and reads a profile."""

from __future__ import annotations

from typing import Any

import pytest

from bench import stream_load
from bench.stream_profile import summarize


def fake_windows(capacity: float, calls: list[float]):  # type: ignore[no-untyped-def]
    def rate_window(load: Any, arm: Any, prefix: str, rate: float, seconds: float):  # type: ignore[no-untyped-def]
        calls.append(round(rate))
        return {"rate": rate, "sustained": rate <= capacity}, []

    return rate_window


def test_the_search_steps_up_then_narrows_between_held_and_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(stream_load, "rate_window", fake_windows(1300, calls))
    best, windows = stream_load.sustained_rate(None, None, "p", 1000, 30, max_windows=5)  # type: ignore[arg-type]
    assert calls == [1000, 1250, 1562, 1406, 1328]
    assert best == pytest.approx(1250)
    assert [w["sustained"] for w in windows] == [True, True, False, False, False]


def test_the_search_steps_down_until_a_rate_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(stream_load, "rate_window", fake_windows(700, calls))
    best, _ = stream_load.sustained_rate(None, None, "p", 1000, 30, max_windows=4)  # type: ignore[arg-type]
    assert calls == [1000, 800, 640, 720] and best == pytest.approx(640)


def test_no_rate_holds_within_the_windows_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_load, "rate_window", fake_windows(10, []))
    best, windows = stream_load.sustained_rate(None, None, "p", 1000, 30, max_windows=2)  # type: ignore[arg-type]
    assert best is None and len(windows) == 2


def test_percentiles_and_lag_slope() -> None:
    values = [float(v) for v in range(1, 101)]
    assert stream_load._pct(values, 50) == 51.0 and stream_load._pct(values, 99) == 100.0
    assert stream_load._pct([], 50) is None
    assert stream_load._slope([(0.0, 10), (1.0, 30), (2.0, 50)]) == pytest.approx(20.0)
    assert stream_load._slope([(0.0, 10)]) == 0.0


def test_profile_samples_are_charged_to_the_innermost_known_area() -> None:
    raw = "\n".join(
        [
            "main (x.py:1);StreamWorker.step (workers/kafka_source.py:9);"
            "KafkaConsumer.poll (kafka/consumer/group.py:5) 30",
            "main (x.py:1);ScoringPipeline.process (workers/pipeline.py:3);"
            "loads (json/__init__.py:2) 20",
            "main (x.py:1);ResultSink.write (workers/sink.py:4);execute (psycopg/cursor.py:7) 40",
            "main (x.py:1);helper (x.py:2) 10",
            "run (kafka/net/selector.py:1);EpollSelector.select (selectors.py:468) 100",
        ]
    )
    summary = summarize(raw)
    assert summary["samples"] == 200 and summary["waiting_pct"] == 50.0
    assert summary["busy_share_pct"] == {
        "database": 40.0,
        "kafka-python": 30.0,
        "parse+validate": 20.0,
        "other": 10.0,
    }
    assert summary["top_self_pct_of_busy"][0]["frame"].startswith("execute")
