"""celery-batches, changed so that a flush acknowledges only the messages that are settled.

Stock celery-batches acknowledges every message of a flush when the task returns, even if
it raised (celery-batches#17). The scoring task says which messages it could not settle
(their results were not stored and they could not be re-published: the database and the
broker's writes both failing, say a full Redis under `noeviction`). Those are released
locally instead: this worker forgets them, stops renewing their leases, and the broker
redelivers them once their visibility timeout passes. Nothing is acknowledged unscored.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from celery_batches import Batches, SimpleRequest, apply_batches_task
from celery_batches import partition as _partition
from kombu.transport import virtual

log = logging.getLogger(__name__)


class SettledBatches(Batches):
    """A Batches task whose body may call `keep_unacked(request)` for any request."""

    abstract = True

    def keep_unacked(self, request: SimpleRequest) -> None:
        self._unsettled.add(request.id)

    def flush(self, requests: Collection[Any]) -> Any:
        acks_early, acks_late = _partition(lambda r: bool(r.task.acks_late), requests)
        self._unsettled: set[str] = set()
        serializable = ([SimpleRequest.from_request(r) for r in requests],)

        def on_accepted(pid: int, time_accepted: float) -> None:
            for req in acks_early:
                req.acknowledge()

        def on_return(result: Any) -> None:
            for req in acks_late:
                if req.id in self._unsettled:
                    release(req)
                else:
                    req.acknowledge()

        return self._pool.apply_async(
            apply_batches_task,
            (self, serializable, 0, None),
            accept_callback=on_accepted,
            callback=on_return,
        )


def release(request: Any) -> None:
    """Forget a message here without acknowledging it at the broker: its unacked record
    stays, its lease lapses, and it is redelivered after the visibility timeout."""
    message = request.message
    qos = getattr(message.channel, "qos", None)
    if isinstance(qos, virtual.QoS):
        virtual.QoS.ack(qos, message.delivery_tag)  # local bookkeeping only
    log.warning("message %s left unacknowledged: it will be redelivered", request.id)
