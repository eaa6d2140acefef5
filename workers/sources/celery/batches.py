"""celery-batches, changed so that a flush acknowledges only the messages that are settled,
and so that monitors see every task message.

Stock celery-batches acknowledges every message of a flush when the task returns, even if
it raised (celery-batches#17). The scoring task says which messages it could not settle
(their results were not stored and they could not be re-published: the database and the
broker's writes both failing, say a full Redis under `noeviction`). Those are released
locally instead: this worker forgets them, stops renewing their leases, and the broker
redelivers them once their visibility timeout passes. Nothing is acknowledged unscored.

celery-batches buffers messages through its own strategy, which sends none of the task
events Celery's default strategy and pool send, so Flower's task list stayed empty. Here
each message gets its own: `task-received` when it is buffered, `task-started` when its
flush starts, and `task-succeeded` (with the runtime of its flush), `task-retried` (sent
back to the queue) or `task-failed` (left unacknowledged) when the flush returns. They
go out only when the worker sends task events (`--task-events`, the default here).

A message with a countdown (a batch sent back after a database outage) waits in
celery-batches' buffer until it is due, holding a place in the worker's prefetch; Celery's
default strategy raises the prefetch for each such message, celery-batches did not, so a
worker whose prefetch was full of them fetched nothing else until they were due (up to
30 s). `waiting` counts them, and the prefetch (prefetch.py) makes room for each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from celery_batches import Batches, SimpleRequest, apply_batches_task
from celery_batches import partition as _partition
from kombu.transport import virtual

log = logging.getLogger(__name__)


class SettledBatches(Batches):
    """A Batches task whose body may call `keep_unacked(request)` for any request."""

    abstract = True
    # Ids of buffered messages waiting for their countdown; `on_waiting` hears of changes.
    waiting: set[str]
    on_waiting: Callable[[], None] | None = None

    def keep_unacked(self, request: SimpleRequest) -> None:
        self._unsettled.add(request.id)

    def sent_back(self, request: SimpleRequest) -> None:
        """The message's requests were re-published (a retry), and it is acknowledged."""
        self._retried.add(request.id)

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:  # noqa: N802 - Celery's name
        buffer = self._buffer
        put = buffer.put
        self.waiting = set()

        def put_and_announce(request: Any) -> None:
            if request.eta:
                self.waiting.add(request.id)
                self._waiting_changed()
            put(request)
            received(request)

        buffer.put = put_and_announce
        return super().Strategy(task, app, consumer)

    def _waiting_changed(self) -> None:
        if self.on_waiting is not None:
            self.on_waiting()

    def flush(self, requests: Collection[Any]) -> Any:
        waiting = getattr(self, "waiting", None)
        if waiting:  # usually empty: no set built per flush then
            due = {r.id for r in requests} & waiting
            if due:
                waiting -= due
                self._waiting_changed()
        acks_early, acks_late = _partition(lambda r: bool(r.task.acks_late), requests)
        self._unsettled: set[str] = set()
        self._retried: set[str] = set()
        serializable = ([SimpleRequest.from_request(r) for r in requests],)
        started = time.monotonic()
        for req in requests:
            announce(req, "task-started")

        def on_accepted(pid: int, time_accepted: float) -> None:
            for req in acks_early:
                req.acknowledge()

        def on_return(result: Any) -> None:
            runtime = time.monotonic() - started
            for req in acks_late:
                if req.id in self._unsettled:
                    release(req)
                    announce(
                        req,
                        "task-failed",
                        exception="left unacknowledged: neither stored nor sent back",
                    )
                else:
                    req.acknowledge()
                    if req.id in self._retried:
                        announce(req, "task-retried", exception="results not stored: sent back")
                    else:
                        announce(req, "task-succeeded", result="'scored'", runtime=runtime)

        return self._pool.apply_async(
            apply_batches_task,
            (self, serializable, 0, None),
            accept_callback=on_accepted,
            callback=on_return,
        )


def announce(request: Any, kind: str, **fields: Any) -> None:
    """Send one task event; a monitor's trouble never stops scoring."""
    try:
        request.send_event(kind, **fields)
    except Exception as exc:  # noqa: BLE001 - events are best effort, the message is not
        log.debug("could not send %s for %s: %s", kind, request.id, exc)


def received(request: Any) -> None:
    """The event Celery's default strategy sends for each message it takes."""
    announce(
        request,
        "task-received",
        name=request.name,
        args=request.argsrepr,
        kwargs=request.kwargsrepr,
        root_id=request.root_id,
        parent_id=request.parent_id,
        retries=request.request_dict.get("retries", 0),
        eta=None,
        expires=None,
    )


def release(request: Any) -> None:
    """Forget a message here without acknowledging it at the broker: its unacked record
    stays, its lease lapses, and it is redelivered after the visibility timeout."""
    message = request.message
    qos = getattr(message.channel, "qos", None)
    if isinstance(qos, virtual.QoS):
        virtual.QoS.ack(qos, message.delivery_tag)  # local bookkeeping only
    log.warning("message %s left unacknowledged: it will be redelivered", request.id)
