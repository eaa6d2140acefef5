"""kombu's Redis transport, with a fetch that loses nothing when a worker dies at any instant.

Stock kombu BRPOPs a message and only later, after decoding it in the worker, records it
as unacknowledged (`QoS.append`): a worker killed in between loses that message for good
(kombu#305, celery#7924; about one per 5-7 hard kills under load). Here:

- **Fetch and reserve are one server-side step** (`redis_fetch.lua`): the script pops the
  message and writes it to kombu's `unacked` hash and index before replying. kombu's own
  restore sweep then brings back whatever a dead consumer held; nothing else changes.
- **Idle consumers block on a doorbell, not on the data**: each queue has a data-free list
  (`_scoring.doorbell.<queue>`, at most one item) that publishers ring; a consumer BRPOPs
  the doorbells, then runs the fetch. A BRPOP that times out (every `polling_interval`
  seconds) fetches anyway, so messages pushed by other clients are never stranded.
- **Leases**: a consumer renews the index entries of the messages it holds every
  `lease_renew_interval` seconds, from a thread of its own, so the visibility timeout can
  be short (a minute) without redelivering a long batch or a message buffered by
  celery-batches.
- **Scoring marks survive the worker**: a consumer marks the messages it starts scoring
  (`_scoring.unfinished`: delivery tag -> count) and clears the mark when scoring ends;
  acknowledging a message clears it too, restoring it does not. A message that comes back
  with a mark was being scored when its worker died, that many times: the Celery task
  isolates it, splits it, or dead-letters it (workers/sources/celery/crashes.py).

Queue lists stay where kombu keeps them (Flower's broker page shows their depths), and
priorities, fanout, celery-batches and Sentinel work as before. Registered for
`redis://`, `rediss://` and `sentinel://` URLs by `register()`, which schemas/broker.py
calls before any connection is made. This is our own code because no maintained kombu
release closes the gap (see the README's "Why these dependencies").
"""

from __future__ import annotations

import base64
import logging
import sys
import threading
from pathlib import Path
from queue import Empty
from time import monotonic, time
from typing import Any

from kombu.message import Message as KombuMessage
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from schemas import names

log = logging.getLogger(__name__)

FETCH_SCRIPT = (Path(__file__).with_name("redis_fetch.lua")).read_text()


class LeasedQoS(kombu_redis.QoS):
    """The fetch script already recorded the message: only the local bookkeeping is left;
    and a holder renews the leases of what it holds."""

    def append(self, message: Any, delivery_tag: str) -> None:
        virtual.QoS.append(self, message, delivery_tag)
        self.channel.connection.lease_keeper.ensure_running()

    def ack(self, delivery_tag: str) -> None:
        """kombu's ack (the unacked hash and index), and the message's scoring mark, in one
        round trip. A restore keeps the mark: it counts deaths across redeliveries.

        Not a MULTI transaction (kombu's is): a Redis at its maxmemory under `noeviction`
        refuses every command queued in a MULTI, deletions too, and an ack that fails there
        stopped the consumer. Each deletion is idempotent; the hash entry goes first, so a
        process that dies half-way leaves at most an index entry, which the restore sweep
        drops when it finds no message behind it."""
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.hdel(self.unacked_key, delivery_tag)
            pipe.zrem(self.unacked_index_key, delivery_tag)
            pipe.hdel(names.UNFINISHED_KEY, delivery_tag)
            pipe.execute()
        virtual.QoS.ack(self, delivery_tag)

    def renew(self) -> int:
        """Move the lease of every held message to now; returns how many were renewed.
        ZADD XX: a message acknowledged meanwhile is not brought back."""
        tags = list(self._delivered)  # a copy: the consumer thread changes it
        if not tags:
            return 0
        now = time()
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(tags), 500):
                batch = dict.fromkeys(tags[start : start + 500], now)
                pipe.zadd(self.unacked_index_key, batch, xx=True)
            pipe.execute()
        return len(tags)


class TolerantMessage(virtual.Message):
    """kombu's message, except that one it cannot even build (a body that is not the base64
    its `body_encoding` says, an unknown encoding, headers that are no object) arrives
    carrying the error, with its raw body: kombu then hands it to the consumer's
    on_decode_error, which dead-letters it. kombu's own raised in the event loop, which
    stopped the worker; the message came back after its lease to stop the next one."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        try:
            super().__init__(payload, channel=channel, **kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - any of them: the message is dead-lettered
            encoding = payload["properties"].get("body_encoding")
            problem = (
                f"unreadable message (body_encoding {encoding!r}): {type(exc).__name__}: {exc}"
            )
            try:
                raise ValueError(problem) from exc
            except ValueError:
                self.errors = [sys.exc_info()]
        properties = payload["properties"]
        headers, info = payload.get("headers"), properties.get("delivery_info")
        self._raw = payload
        KombuMessage.__init__(
            self,
            body=payload.get("body"),
            channel=channel,
            delivery_tag=properties["delivery_tag"],
            content_type=payload.get("content-type"),
            content_encoding=payload.get("content-encoding"),
            headers=headers if isinstance(headers, dict) else {},
            properties=properties,
            delivery_info=info if isinstance(info, dict) else {},
            **kwargs,
        )


class AtomicFetchMixin:
    """The Channel behaviour; mixed into kombu's Channel and SentinelChannel."""

    QoS = LeasedQoS
    Message = TolerantMessage
    doorbell_prefix = names.DOORBELL_PREFIX
    dead_letter_queue = names.DEAD_LETTER_QUEUE
    lease_renew_interval = 15.0
    OWN_OPTIONS = ("doorbell_prefix", "dead_letter_queue", "lease_renew_interval")
    from_transport_options: Any = kombu_redis.Channel.from_transport_options + OWN_OPTIONS

    # Attributes of kombu's Channel this mixin relies on (for type checkers).
    client: Any
    connection: Any
    active_queues: Any
    priority_steps: Any
    sep: str
    unacked_key: str
    unacked_index_key: str
    _queue_cycle: Any
    _in_poll: Any
    _brpop_sent_at: Any
    brpop_timeout: Any
    connection_errors: Any
    _expires: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self, "global_keyprefix", ""):
            raise ValueError(
                "the atomic-fetch Redis transport does not support global_keyprefix; "
                "use a Redis database (redis://host/N) of its own instead"
            )
        self._fetch_order: list[str] = []
        self._fetch_script = self.client.register_script(FETCH_SCRIPT)

    def decode_body(self, body: Any, encoding: str | None = None) -> Any:
        """base64 strictly: kombu's skips what is not base64 and decodes the rest to bytes
        that fail later with a reason that does not say why (a hand-built message)."""
        if encoding == "base64":
            return base64.b64decode(body, validate=True)
        return super().decode_body(body, encoding)  # type: ignore[misc]

    # -- names ------------------------------------------------------------------------

    def doorbell(self, queue: str) -> str:
        return f"{self.doorbell_prefix}{queue}"

    # -- consuming --------------------------------------------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Block on the doorbells of the queues in turn (data-free: nothing is lost if
        this connection dies with a reply in flight)."""
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._fetch_order = list(queues)
        keys = [self.doorbell(q) for q in queues] + [timeout or 0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command("BRPOP", *keys)

    def _brpop_read(self, **options: Any) -> bool:
        """The doorbell rang (or the wait timed out): fetch-and-reserve, then deliver."""
        try:
            try:
                self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()  # type: ignore[attr-defined]
        fetched = self.fetch(self._fetch_order or list(self.active_queues))
        if fetched is None:
            raise Empty()
        queue, payload = fetched
        self._queue_cycle.rotate(queue)
        self.connection._deliver(payload, queue)
        return True

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        """basic_get: the same atomic fetch, for one queue."""
        fetched = self.fetch([queue])
        if fetched is None:
            raise Empty()
        return fetched[1]

    def fetch(self, queues: list[str]) -> tuple[str, Any] | None:
        """Pop and reserve the next message of `queues` (priority first, then queue
        order); (queue, message) or None when every list is empty."""
        lists = [self._q_for_pri(q, p) for p in self.priority_steps for q in queues]  # type: ignore[attr-defined]
        bells = [self.doorbell(q) for _ in self.priority_steps for q in queues]
        dead = self._q_for_pri(self.dead_letter_queue, 0)  # type: ignore[attr-defined]
        keys = [*lists, *bells, self.unacked_key, self.unacked_index_key, dead]
        args = [len(lists), repr(time()), self.dead_letter_queue]
        reply = self._fetch_script(keys=keys, args=args, client=self.client)
        if not reply:
            return None
        where = bytes_to_str(reply[0])
        if where == "parked":
            log.warning("parked a non-kombu item from %s on %s", bytes_to_str(reply[1]), dead)
            return None
        return where.rsplit(self.sep, 1)[0], loads(bytes_to_str(reply[1]))

    # -- scoring marks ----------------------------------------------------------------

    def unfinished(self, tags: list[str]) -> list[int]:
        """How many times scoring each message started and never finished (0: never)."""
        if not tags:
            return []
        with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
            values = client.hmget(names.UNFINISHED_KEY, tags)
        return [int(v) if v is not None else 0 for v in values]

    def start_scoring(self, tags: list[str], weight: int = 1) -> None:
        """Mark the messages as being scored (add `weight` to each count), before the
        model sees them."""
        self._marks("hincrby", tags, weight)

    def finish_scoring(self, tags: list[str]) -> None:
        """Scoring ended, however it ended, with the worker alive: clear the marks."""
        self._marks("hdel", tags)

    def _marks(self, command: str, tags: list[str], weight: int = 1) -> None:
        if not tags:
            return
        with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
            pipe = client.pipeline(transaction=False)
            if command == "hdel":
                pipe.hdel(names.UNFINISHED_KEY, *tags)
            else:
                for tag in tags:
                    pipe.hincrby(names.UNFINISHED_KEY, tag, weight)
            pipe.execute()

    # -- publishing -------------------------------------------------------------------

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """LPUSH the message and ring its queue's doorbell (one round trip)."""
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))  # type: ignore[attr-defined]
        commands: list[tuple[Any, ...]] = [("lpush", key, dumps(message))]
        if self._expires and queue in self._expires:
            for p in self.priority_steps:
                commands.append(("pexpire", self._q_for_pri(queue, p), self._expires[queue]))  # type: ignore[attr-defined]
        commands += [("lpush", self.doorbell(queue), "1"), ("ltrim", self.doorbell(queue), 0, 0)]
        batch = kwargs.pop("_publish_batch", None)
        if batch is not None:
            for name, *args in commands:
                batch.add(name, *args)
            return
        with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
            with client.pipeline(transaction=True) as pipe:
                for name, *args in commands:
                    getattr(pipe, name)(*args)
                pipe.execute()

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        """A restored message (expired lease, rejected, shutdown) rings its doorbell too."""
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)  # type: ignore[misc]
        for queue in self._lookup(exchange, routing_key):  # type: ignore[attr-defined]
            pipe.lpush(self.doorbell(queue), "1")
            pipe.ltrim(self.doorbell(queue), 0, 0)


class LeaseKeeper:
    """One thread per connection that renews the leases of every message its channels
    hold; started on the first delivery, so publishers never run it."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="redis-leases", daemon=True)
                self._thread.start()

    def interval(self) -> float:
        channels = list(self.transport.channels)
        return min((float(c.lease_renew_interval) for c in channels), default=15.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval()):
            for channel in list(self.transport.channels):
                qos = getattr(channel, "_qos", None)
                if not isinstance(qos, LeasedQoS):
                    continue
                try:
                    qos.renew()
                except Exception as exc:  # noqa: BLE001 - retried next round; the sweep is the backstop
                    log.warning("could not renew message leases: %s", exc)

    def stop(self) -> None:
        self._stop.set()


class AtomicFetchChannel(AtomicFetchMixin, kombu_redis.Channel):
    pass


class AtomicFetchSentinelChannel(AtomicFetchMixin, kombu_redis.SentinelChannel):
    from_transport_options: Any = (
        kombu_redis.SentinelChannel.from_transport_options + AtomicFetchMixin.OWN_OPTIONS
    )


class _KeeperMixin:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lease_keeper = LeaseKeeper(self)

    def close_connection(self, connection: Any) -> None:
        self.lease_keeper.stop()
        super().close_connection(connection)  # type: ignore[misc]


class Transport(_KeeperMixin, kombu_redis.Transport):
    Channel = AtomicFetchChannel


class SentinelTransport(_KeeperMixin, kombu_redis.SentinelTransport):
    Channel = AtomicFetchSentinelChannel


def register() -> None:
    """Serve redis://, rediss:// and sentinel:// URLs with this transport (idempotent)."""
    TRANSPORT_ALIASES["redis"] = "schemas.redis_transport:Transport"
    TRANSPORT_ALIASES["rediss"] = "schemas.redis_transport:Transport"
    TRANSPORT_ALIASES["sentinel"] = "schemas.redis_transport:SentinelTransport"
