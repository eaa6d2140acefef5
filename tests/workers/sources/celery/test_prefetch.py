"""Prefetch in rows: big bulk chunks → few messages held; per-event messages → many."""

from __future__ import annotations

from types import SimpleNamespace

from kombu.common import QoS

from workers.sources.celery.prefetch import RowPrefetch


def _task_with_consumer() -> tuple[SimpleNamespace, list[int]]:
    sent: list[int] = []
    qos = QoS(lambda prefetch_count: sent.append(prefetch_count), 1)
    task = SimpleNamespace(
        flush_every=1, app=SimpleNamespace(scoring_consumer=SimpleNamespace(qos=qos))
    )
    return task, sent


def test_bulk_chunks_hold_about_hold_rows() -> None:
    task, sent = _task_with_consumer()
    prefetch = RowPrefetch(task, hold_rows=512, max_messages=256)
    assert prefetch.observe(messages=1, rows=256) == 2
    assert task.flush_every == 2 and sent == [2]
    assert prefetch.observe(messages=2, rows=512) == 2
    assert sent == [2]  # unchanged: no new basic_qos call


def test_per_event_messages_grow_to_the_message_cap() -> None:
    task, sent = _task_with_consumer()
    prefetch = RowPrefetch(task, hold_rows=512, max_messages=256)
    counts = [prefetch.observe(messages=n, rows=n) for n in (1, 4, 64, 256)]
    assert counts == [256, 256, 256, 256]
    assert task.flush_every == 256 and sent[-1] == 256


def test_the_estimate_follows_a_change_of_message_size() -> None:
    task, _ = _task_with_consumer()
    prefetch = RowPrefetch(task, hold_rows=512, max_messages=256)
    prefetch.observe(messages=100, rows=100)
    assert prefetch.observe(messages=2, rows=512) == 2
    assert prefetch.observe(messages=1, rows=1) == 256


def test_without_a_consumer_only_the_flush_size_changes() -> None:
    task = SimpleNamespace(flush_every=1, app=SimpleNamespace())
    assert RowPrefetch(task, hold_rows=100, max_messages=8).observe(1, 10) == 8
    assert task.flush_every == 8


def test_messages_waiting_for_a_countdown_get_a_place_each_on_top() -> None:
    """A worker whose one prefetch place holds a message with a countdown fetches more,
    as Celery's own strategy allows; the place goes when the message is flushed."""
    task, sent = _task_with_consumer()
    task.waiting = set()
    prefetch = RowPrefetch(task, hold_rows=512, max_messages=256)
    assert prefetch.messages == 1
    task.waiting |= {"retry-1", "retry-2"}
    prefetch.waiting_changed()
    assert sent[-1] == 3 and task.flush_every == 1
    prefetch.observe(messages=2, rows=512)
    assert sent[-1] == 2 + 2  # the row estimate, plus the two still waiting
    task.waiting.clear()
    prefetch.waiting_changed()
    assert sent[-1] == 2
