"""`scoring bench switch`'s diagnosis fields: slow windows and long garbage collections."""

from __future__ import annotations

import time

from bench.switch import _slow_windows, _Timing


def test_slow_windows_are_half_seconds_after_the_promotion_with_a_high_median() -> None:
    promoted = 100.0
    latencies = [
        (99.0, 0.5),  # before the promotion: never a window
        (100.1, 0.008),
        (100.2, 0.009),  # window 0: p50 8.5 ms, under 20 ms
        (100.6, 0.030),
        (100.7, 0.040),
        (100.9, 0.001),  # window 1: p50 30 ms
    ]
    windows = _slow_windows(latencies, promoted, over=0.02)
    assert windows == [{"from_s": 0.5, "n": 3, "p50_ms": 30.0, "max_ms": 40.0}]


def test_only_collections_over_20_ms_are_kept_with_their_generation() -> None:
    timing = _Timing()
    timing.gc_event("start", {"generation": 0})
    timing.gc_event("stop", {"generation": 0})  # a fast collection: not a pause
    timing.gc_event("start", {"generation": 2})
    time.sleep(0.03)
    timing.gc_event("stop", {"generation": 2})
    assert len(timing.gc_pauses) == 1
    _, seconds, generation, thread = timing.gc_pauses[0]
    assert seconds >= 0.03 and generation == 2 and thread == "MainThread"
