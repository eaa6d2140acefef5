"""How a flush treats messages that came back after their worker died scoring them."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from celery_batches import SimpleRequest

from schemas.chunks import REQUEST_ID_COLUMN, decode_chunk, encode_chunk
from workers.sources.base import WorkItem
from workers.sources.celery import crashes
from workers.sources.celery.crashes import ALONE, ISOLATE, CrashGuard, delivery_tag, split_message

ENVELOPE = {
    "source": "bulk",
    "bulk_run_id": "run-1",
    "bulk_chunk": 7,
    "enqueued_at": 123.5,
    "attempt": 2,
}


def request(tag: str, args: tuple[Any, ...] = (), **kwargs: Any) -> SimpleRequest:
    return SimpleRequest(
        id=f"id-{tag}",
        name="scoring.score",
        args=args,
        kwargs=kwargs,
        delivery_info={"routing_key": "q", "priority": 0, "redelivered": True},
        hostname="h",
        ignore_result=True,
        reply_to=None,
        correlation_id=None,
        request_dict={"properties": {"delivery_tag": tag}},
    )


def requests_message(tag: str, n: int, **kwargs: Any) -> SimpleRequest:
    return request(tag, ([{"request_id": f"{tag}-{i}"} for i in range(n)],), **kwargs)


def test_a_message_of_requests_splits_in_halves_keeping_its_envelope() -> None:
    req = requests_message("a", 5, **ENVELOPE)
    (args1, kw1), (args2, kw2) = split_message(req)
    assert args1[0] + args2[0] == req.args[0] and len(args1[0]) == 2
    for kw in (kw1, kw2):
        assert kw == {**ENVELOPE, ISOLATE: True}


def test_a_bulk_chunk_splits_in_halves_of_rows() -> None:
    rows = pa.RecordBatch.from_arrays([pa.array(list("abcde"))], names=[REQUEST_ID_COLUMN])
    req = request("c", (), chunk=encode_chunk(rows), model="demo", model_version=1, **ENVELOPE)
    halves = split_message(req)
    ids = [decode_chunk(kw["chunk"]).column(0).to_pylist() for _, kw in halves]
    assert ids == [["a", "b"], ["c", "d", "e"]]
    assert all(args == [] and kw["bulk_chunk"] == 7 and kw[ISOLATE] for args, kw in halves)
    assert all(kw["model"] == "demo" and kw["model_version"] == 1 for _, kw in halves)


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> CrashGuard:
    deaths = {
        "fresh": 0,
        "half": 0,
        "once": 1,
        "twice": 2,
        "many": 2,
        "died-half": ALONE,
        "one": 2 + ALONE,
        "poison": 3 * ALONE,
        "worse": 4 * ALONE + 1,
    }
    g = CrashGuard(None, max_deaths=3, dead_letters=lambda item: None)
    monkeypatch.setattr(g, "_unfinished", lambda tags: [deaths.get(t or "", 0) for t in tags])
    return g


def test_the_plan_batches_isolates_splits_and_dead_letters_by_deaths(guard: CrashGuard) -> None:
    fresh = requests_message("fresh", 4)
    half = requests_message("half", 2, **{ISOLATE: True})
    once = requests_message("once", 4)
    twice = requests_message("twice", 1)
    many = requests_message("many", 4)
    died_half = requests_message("died-half", 2, **{ISOLATE: True})
    one = requests_message("one", 1)
    poison = requests_message("poison", 1)
    worse = requests_message("worse", 1)
    plan = guard.plan([fresh, half, once, twice, many, died_half, one, poison, worse])
    assert plan.together == [fresh]  # never died: batched as always
    assert plan.suspects == [once]  # died once in a batch (a SIGKILL): a batch of its own
    assert plan.alone == [half, twice, one]  # a half; singles short of 3 deaths alone
    assert plan.split == [(many, 2), (died_half, 1)]
    assert plan.dead == [(poison, 3), (worse, 5)]
    assert plan.groups() == [
        ([fresh], False),
        ([once], False),
        ([half], True),
        ([twice], True),
        ([one], True),
    ]


def test_no_marks_means_every_message_is_scored_as_delivered(monkeypatch) -> None:
    g = CrashGuard(None, 3, lambda item: None)

    class Broken:
        def __enter__(self) -> Any:
            raise ConnectionError("redis down")

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(g, "_channel", Broken)
    reqs = [requests_message("x", 3), requests_message("y", 1)]
    assert g.plan(reqs).together == reqs
    with g.scoring(reqs):  # marking fails quietly: scoring goes on
        pass


def test_a_dead_letter_says_how_many_times_the_worker_died() -> None:
    parked: list[Any] = []
    g = CrashGuard(None, 3, parked.append)
    assert g.dead_letter(WorkItem(payload={"request_id": "p"}, source="redis"), 3)
    assert parked[0].reason == "the worker died while scoring it 3 times"
    assert delivery_tag(requests_message("t", 1)) == "t"
    assert crashes.request_count(requests_message("t", 6)) == 6
