"""Micro-batching as one plain function: fill until `max_size` or `max_wait`, on a clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Stop:
    """Sentinel a receive function returns to end batching for good."""


STOP = Stop()

Receive = Callable[[float | None], "T | Stop | None"]


def next_batch(
    receive: Callable[[float | None], T | Stop | None],
    max_size: int,
    max_wait_s: float,
    clock: Callable[[], float] = time.monotonic,
    size: Callable[[T], int] = lambda item: 1,
    limits: Callable[[T], tuple[int, float] | None] | None = None,
) -> list[T] | None:
    """Block for the first item, then gather more until `max_size` items or `max_wait_s`.

    With `size`, items count as that many (a bulk chunk of 256 requests fills a batch of
    256 on its own); a batch stops once it holds `max_size` or more.

    `receive(timeout)` returns an item, None when `timeout` seconds passed with nothing,
    or STOP. A timeout of None blocks. The wait is measured from the first item's arrival,
    so no item waits in the batcher longer than `max_wait_s`; items already waiting are
    taken even when the wait is spent (a `max_wait_s` of 0 batches what is there).

    With `limits`, an item may bring its own (max_size, max_wait_s): its model version's.
    The batch then keeps the tightest limits of the items it holds, each wait counted from
    that item's arrival, so no item waits longer, or is batched with more, than its
    version allows (items of versions with larger limits simply join it).

    Returns None on STOP with nothing gathered; a STOP that arrives mid-batch ends the
    batch and is seen next call (the caller's receive must keep returning STOP once stopped).
    """
    first = receive(None)
    while first is None:
        first = receive(None)
    if isinstance(first, Stop):
        return None
    batch: list[T] = [first]
    held = size(first)
    deadline = clock() + max_wait_s
    if limits is not None:
        max_size, deadline = _tighten(limits(first), max_size, deadline, clock)
    while held < max_size:
        remaining = max(0.0, deadline - clock())
        item = receive(remaining)
        if item is None:
            if remaining == 0.0:
                break
            continue
        if isinstance(item, Stop):
            break
        batch.append(item)
        held += size(item)
        if limits is not None:
            max_size, deadline = _tighten(limits(item), max_size, deadline, clock)
    return batch


def _tighten(
    own: tuple[int, float] | None, max_size: int, deadline: float, clock: Callable[[], float]
) -> tuple[int, float]:
    if own is None:
        return max_size, deadline
    return min(max_size, own[0]), min(deadline, clock() + own[1])
