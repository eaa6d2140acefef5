"""Requests that kill the worker: found across crashes, isolated, then dead-lettered.

A model that raises on one input is handled inside the batch (the pipeline bisects the
failing model call). A model that takes the process down with it (`os._exit`, a segfault,
the kernel's OOM killer) cannot be caught: the worker dies, the broker redelivers the
message, and the next worker would die on it again, for ever. So the count is kept where
the crash cannot reach it: before a message's requests go to the scorer, the task marks the
message in Redis (`_scoring.unfinished`, by delivery tag; schemas/redis_transport.py), and
it clears the mark when scoring ends, however it ended. A message that comes back with a
mark was being scored when its worker died (deaths in a batch and deaths alone are
counted apart: ALONE is the weight of the second). Then:

- after one death in a batch (what a SIGKILL of the worker leaves: the usual case) the
  message is scored again in a batch of its own with the flush's other such messages, so
  a kill costs one more submit per flush, not one per message;
- after more, a message of several requests (or a bulk chunk of several rows) is split in
  halves, each re-published as a new message flagged `isolate` (scored alone from its
  first delivery), and the original is acknowledged: the request at fault is found in
  log2(n) more crashes;
- a message of one request is scored alone, in a submit of its own, so no innocent request
  shares its micro-batch (and its crash); once scoring it alone killed a worker
  `SCORING_MAX_DELIVERIES` times, it is dead-lettered with the reason, and acknowledged.

A request at fault in a message of n >= 2 costs at most N + ceil(log2(n)) + 1 crashes (N
the setting; N + 2 in a message of its own, which first shares the suspects' batch); an
innocent one that shared its batches dies at most twice with it, never alone,
so it is never dead-lettered.

Only scoring marks: a worker killed while it merely held a message (prefetched, buffered
by celery-batches) leaves no mark on it, so a SIGKILLed worker's messages come back as
they were. The marks of what was scored before the crash were already cleared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery_batches import SimpleRequest

from schemas import names
from schemas.chunks import encode_chunk
from schemas.redis_transport import AtomicFetchMixin
from schemas.task_repr import task_reprs
from workers.core.chunks import RowChunk
from workers.sources.base import Outcome, WorkItem

log = logging.getLogger(__name__)

ISOLATE = "isolate"  # the task kwarg of a half: score it on its own from its first delivery
ALONE = 1000  # the count's weight of a death while scored alone (below it: in a batch)


@dataclass
class Plan:
    """What a flush does with each of its messages."""

    together: list[SimpleRequest] = field(default_factory=list)  # one submit, as always
    suspects: list[SimpleRequest] = field(default_factory=list)  # died once: one submit
    alone: list[SimpleRequest] = field(default_factory=list)  # a submit each
    split: list[tuple[SimpleRequest, int]] = field(default_factory=list)  # (message, deaths)
    dead: list[tuple[SimpleRequest, int]] = field(default_factory=list)

    def groups(self) -> list[tuple[list[SimpleRequest], bool]]:
        """(messages, scored alone) for each submit: the batches, then one per loner."""
        batches = [(g, False) for g in (self.together, self.suspects) if g]
        return batches + [([r], True) for r in self.alone]


class CrashGuard:
    """Reads and keeps the scoring marks of the messages of a flush (on the Redis transport;
    with any other broker it marks nothing and every message is scored as delivered)."""

    def __init__(
        self, app: Celery, max_deaths: int, dead_letters: Callable[[WorkItem], None]
    ) -> None:
        self.app = app
        self.max_deaths = max_deaths
        self.dead_letters = dead_letters

    def plan(self, requests: list[SimpleRequest]) -> Plan:
        plan = Plan()
        deaths = self._unfinished([delivery_tag(r) for r in requests])
        for req, count in zip(requests, deaths, strict=True):
            alone, in_batch = divmod(count, ALONE)
            isolate = bool(req.kwargs.get(ISOLATE))
            if count == 0:
                (plan.alone if isolate else plan.together).append(req)
            elif count == 1 and not isolate:
                plan.suspects.append(req)
            elif request_count(req) > 1:
                plan.split.append((req, alone + in_batch))
            elif alone >= self.max_deaths:
                plan.dead.append((req, alone + in_batch))
            else:
                plan.alone.append(req)
        return plan

    @contextmanager
    def scoring(self, group: list[SimpleRequest], alone: bool = False) -> Iterator[None]:
        """Marked while the scorer has them; cleared whatever happens, unless the process
        dies (which is the point)."""
        tags = [t for t in (delivery_tag(r) for r in group) if t]
        self._mark("start_scoring", tags, ALONE if alone else 1)
        try:
            yield
        finally:
            self._mark("finish_scoring", tags)

    def split(self, req: SimpleRequest, deaths: int) -> bool:
        """Re-publish the message's requests as two messages; False if the broker refused
        (the original then stays unacknowledged, and is split on its next delivery)."""
        halves = split_message(req)
        try:
            with self.app.producer_or_acquire() as producer:
                for args, kwargs in halves:
                    self.app.send_task(
                        names.SCORE_TASK,
                        args=args,
                        kwargs=kwargs,
                        producer=producer,
                        **_route(req),
                        **task_reprs(args, kwargs),
                    )
        except Exception as exc:  # noqa: BLE001 - the broker refused the write
            log.error("could not split message %s (%s): it stays unacknowledged", req.id, exc)
            return False
        log.warning(
            "message %s came back after the worker died scoring it (%d times): "
            "split into two messages to find the request at fault",
            req.id,
            deaths,
        )
        return True

    def dead_letter(self, item: WorkItem, deaths: int) -> bool:
        """Park the message's one request with the reason; False if the broker refused."""
        item.reason = f"the worker died while scoring it {deaths} times"
        item.outcome = Outcome.DEAD
        try:
            self.dead_letters(item)
        except Exception as exc:  # noqa: BLE001 - the broker refused the write
            log.error("could not dead-letter %s (%s): it stays unacknowledged", item.reason, exc)
            return False
        return True

    # -- Redis ---------------------------------------------------------------------------

    def _unfinished(self, tags: list[str | None]) -> list[int]:
        known = [t for t in tags if t]
        try:
            with self._channel() as channel:
                counts = dict(zip(known, channel.unfinished(known), strict=True)) if channel else {}
        except Exception as exc:  # noqa: BLE001 - no marks read: score as delivered
            log.warning("could not read scoring marks: %s", exc)
            counts = {}
        return [counts.get(t, 0) if t else 0 for t in tags]

    def _mark(self, method: str, tags: list[str], *args: Any) -> None:
        if not tags:
            return
        try:
            with self._channel() as channel:
                if channel is not None:
                    getattr(channel, method)(tags, *args)
        except Exception as exc:  # noqa: BLE001 - scoring goes on; only the count is missed
            log.warning("could not %s %d messages: %s", method.replace("_", " "), len(tags), exc)

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        with self.app.producer_or_acquire() as producer:
            channel = producer.channel
            yield channel if isinstance(channel, AtomicFetchMixin) else None


def delivery_tag(req: SimpleRequest) -> str | None:
    properties = (req.request_dict or {}).get("properties") or {}
    tag = properties.get("delivery_tag")
    return tag if isinstance(tag, str) and tag else None


def _payloads(req: SimpleRequest) -> Any:
    return req.args[0] if req.args else req.kwargs.get("requests", [])


def request_count(req: SimpleRequest) -> int:
    """Requests the message carries (rows, for a bulk chunk; 1 for one it cannot read)."""
    if "chunk" in req.kwargs:
        return RowChunk.from_message(req.kwargs).size
    payloads = _payloads(req)
    return len(payloads) if isinstance(payloads, list) else 1


def split_message(req: SimpleRequest) -> list[tuple[list[Any], dict[str, Any]]]:
    """(args, kwargs) of two messages carrying the message's requests between them, with
    its envelope (source, bulk run and chunk, enqueued_at, attempt) and the isolate flag."""
    kwargs = {k: v for k, v in req.kwargs.items() if k != "requests"}
    kwargs[ISOLATE] = True
    if "chunk" in kwargs:
        rows = RowChunk.from_message(req.kwargs).rows
        assert rows is not None and rows.num_rows > 1
        middle = rows.num_rows // 2
        return [
            ([], {**kwargs, "chunk": encode_chunk(rows.slice(0, middle))}),
            ([], {**kwargs, "chunk": encode_chunk(rows.slice(middle))}),
        ]
    payloads = _payloads(req)
    middle = len(payloads) // 2
    return [([payloads[:middle]], dict(kwargs)), ([payloads[middle:]], dict(kwargs))]


def _route(req: SimpleRequest) -> dict[str, Any]:
    """The original's queue and priority, for its halves."""
    info = req.delivery_info or {}
    route: dict[str, Any] = {}
    if info.get("routing_key"):
        route["queue"] = info["routing_key"]
    if info.get("priority") is not None:
        route["priority"] = info["priority"]
    return route
