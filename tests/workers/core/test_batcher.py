"""The micro-batcher flushes at its size, at its wait, and never holds an item too long."""

from __future__ import annotations

import pytest

from workers.core.batcher import STOP, next_batch


class FakeClock:
    """A clock that only moves when receive() waits, so timing tests are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scripted(arrivals: list[tuple[float, object]], clock: FakeClock):
    """receive() over items that arrive at fixed times on the fake clock."""
    pending = list(arrivals)

    def receive(timeout: float | None) -> object | None:
        if not pending:
            if timeout is None:
                return STOP
            clock.now += timeout
            return None
        at, item = pending[0]
        if timeout is not None and at > clock.now + timeout:
            clock.now += timeout
            return None
        clock.now = max(clock.now, at)
        pending.pop(0)
        return item

    return receive


@pytest.mark.parametrize("max_size", [1, 2, 8, 64])
def test_flushes_at_max_size_when_items_keep_coming(max_size: int) -> None:
    clock = FakeClock()
    receive = scripted([(0.0, i) for i in range(max_size * 3)], clock)
    batch = next_batch(receive, max_size=max_size, max_wait_s=10.0, clock=clock)
    assert batch == list(range(max_size))
    assert clock.now == 0.0


@pytest.mark.parametrize("max_wait", [0.0, 0.005, 0.05, 1.0])
def test_flushes_at_max_wait_with_a_partial_batch(max_wait: float) -> None:
    clock = FakeClock()
    receive = scripted([(0.0, "a"), (0.0, "b"), (max_wait + 5.0, "late")], clock)
    batch = next_batch(receive, max_size=100, max_wait_s=max_wait, clock=clock)
    assert batch == ["a", "b"]
    assert clock.now == pytest.approx(max_wait)


def test_wait_is_counted_from_the_first_item_not_from_the_call() -> None:
    clock = FakeClock()
    receive = scripted([(3.0, "a"), (3.5, "b"), (3.9, "c"), (9.0, "d")], clock)
    batch = next_batch(receive, max_size=100, max_wait_s=1.0, clock=clock)
    assert batch == ["a", "b", "c"]
    assert clock.now == pytest.approx(4.0)


def test_returns_none_on_stop_and_ends_a_batch_early() -> None:
    items: list[object] = ["a", STOP]
    receive = lambda timeout: items.pop(0) if items else STOP  # noqa: E731
    assert next_batch(receive, max_size=10, max_wait_s=60.0) == ["a"]
    assert next_batch(receive, max_size=10, max_wait_s=60.0) is None
    assert next_batch(receive, max_size=10, max_wait_s=60.0) is None  # stopped for good


# Arrival gaps at and below the model's capacity (16 items per 30 ms, about 1.9 ms an item);
# above capacity any queue grows without bound, which is what autoscaling is for.
@pytest.mark.parametrize("rate_gap", [0.002, 0.004, 0.05])
def test_no_request_waits_longer_than_max_wait_plus_one_batch_run(rate_gap: float) -> None:
    """Steady arrivals and a slow model on the fake clock: the bound holds exactly."""
    max_wait, run_time, n = 0.02, 0.03, 400
    clock = FakeClock()
    receive = scripted([(i * rate_gap, i * rate_gap) for i in range(n)], clock)
    waits: list[float] = []
    while (batch := next_batch(receive, max_size=16, max_wait_s=max_wait, clock=clock)) is not None:
        waits.extend(clock.now - arrived for arrived in batch)  # type: ignore[operator]
        clock.now += run_time  # the model runs
    assert len(waits) == n
    assert max(waits) <= max_wait + run_time + 1e-9


def test_items_can_count_as_many_requests() -> None:
    """A bulk chunk of 256 requests fills a batch of 256 on its own."""
    clock = FakeClock()
    receive = scripted([(0.0, 100), (0.0, 200), (0.0, 1), (0.0, 1)], clock)
    size = int  # each scripted item is its own size
    assert next_batch(receive, 256, 1.0, clock, size=size) == [100, 200]
    assert next_batch(receive, 256, 1.0, clock, size=size) == [1, 1]
