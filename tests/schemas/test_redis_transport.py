"""The atomic-fetch Redis transport against a real Redis: a message is always either queued
or recorded as unacknowledged, even when the consumer dies at the worst instant."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Producer, Queue

from schemas import names, redis_transport
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

OPTIONS = {"visibility_timeout": 3, "lease_renew_interval": 0.5, "polling_interval": 1}


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"t-atomic-{uuid.uuid4().hex[:8]}"
    yield name


@pytest.fixture
def client(redis_url: str, queue: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    keys = names.queue_lists(queue)
    r.delete(*keys, f"{names.DOORBELL_PREFIX}{queue}", f"{queue}.dlq")
    for tag, raw in r.hgetall("unacked").items():
        if queue.encode() in raw:
            r.hdel("unacked", tag)
            r.zrem("unacked_index", tag)


def connection(url: str, **options: Any) -> Connection:
    redis_transport.register()
    return Connection(url, transport_options={**OPTIONS, **options})


def publish(url: str, queue: str, bodies: list[dict[str, Any]], **kw: Any) -> None:
    with connection(url) as conn:
        producer = Producer(conn.channel())
        for body in bodies:
            producer.publish(
                body, routing_key=queue, declare=[Queue(queue)], serializer="json", **kw
            )


def consume(url: str, queue: str, n: int, ack: bool = True, timeout: float = 15) -> list[Any]:
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        if ack:
            message.ack()

    with connection(url, dead_letter_queue=f"{queue}.dlq") as conn:
        with Consumer(conn, [Queue(queue)], callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + timeout
            while len(got) < n and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
    return got


def unacked_for(client: redis.Redis, queue: str) -> int:
    return sum(queue.encode() in raw for raw in client.hvals("unacked"))


def test_messages_go_through_in_priority_order_and_leave_nothing_behind(
    redis_url: str, queue: str, client: redis.Redis
) -> None:
    publish(redis_url, queue, [{"i": i} for i in range(4)], priority=0)
    publish(redis_url, queue, [{"i": 9}], priority=9)
    assert client.llen(f"{names.DOORBELL_PREFIX}{queue}") == 1  # rung, and capped at one
    got = consume(redis_url, queue, 5)
    assert [b["i"] for b in got] == [0, 1, 2, 3, 9]  # kombu's Redis order: step 0 first
    assert unacked_for(client, queue) == 0 and client.llen(queue) == 0


def test_a_message_pushed_without_ringing_the_doorbell_is_still_consumed(
    redis_url: str, queue: str, client: redis.Redis
) -> None:
    """Another client (not this transport) LPUSHes a kombu message and rings nothing."""
    publish(redis_url, queue, [{"i": 1}])
    client.delete(f"{names.DOORBELL_PREFIX}{queue}")
    started = time.monotonic()
    assert consume(redis_url, queue, 1) == [{"i": 1}]
    assert time.monotonic() - started < 5  # found by the BRPOP timeout's fetch


def test_an_item_that_is_no_kombu_message_is_parked_with_the_reason(
    redis_url: str, queue: str, client: redis.Redis
) -> None:
    client.lpush(queue, b"this is not json")
    publish(redis_url, queue, [{"i": 2}])
    assert consume(redis_url, queue, 1) == [{"i": 2}]  # the consumer kept going
    (parked,) = consume(redis_url, f"{queue}.dlq", 1)
    assert "not a kombu message" in parked["reason"]
    assert parked["payload"] == "this is not json"


def test_a_held_message_is_not_redelivered_while_its_holder_renews_the_lease(
    redis_url: str, queue: str, client: redis.Redis
) -> None:
    publish(redis_url, queue, [{"i": 3}])
    with connection(redis_url) as holder:
        held: list[Any] = []
        with Consumer(holder, [Queue(queue)], callbacks=[lambda b, m: held.append(m)]):
            wait_for(lambda: _drain(holder) or bool(held), timeout=10)
            with connection(redis_url) as sweeper:  # its restore sweep runs on every poll
                channel = sweeper.default_channel
                for _ in range(8):  # 8 s: well past the 3 s visibility timeout
                    channel.qos.restore_visible(num=100, interval=1)
                    time.sleep(1)
                    _drain(holder)
            assert client.llen(queue) == 0 and unacked_for(client, queue) == 1
            held[0].ack()
    assert unacked_for(client, queue) == 0 and client.llen(queue) == 0


def _drain(conn: Connection) -> bool:
    try:
        conn.drain_events(timeout=0.2)
    except TimeoutError:
        pass
    return False


KILL_AT_DELIVERY = textwrap.dedent(
    """
    import os, sys
    from kombu import Connection, Consumer, Queue
    from kombu.transport import virtual
    url, queue, ours = sys.argv[1], sys.argv[2], sys.argv[3] == "ours"
    if ours:
        from schemas import redis_transport
        redis_transport.register()
    # The fault point: the message has left the queue list and reached this process,
    # which dies before kombu's QoS.append could record it (kombu#305).
    virtual.Transport._deliver = lambda self, message, queue: os._exit(9)
    with Connection(url, transport_options={"visibility_timeout": 3}) as conn:
        with Consumer(conn, [Queue(queue)], callbacks=[lambda b, m: None]):
            conn.drain_events(timeout=30)
    """
)


@pytest.mark.parametrize("transport", ["stock", "ours"])
def test_a_consumer_killed_between_receiving_and_recording(
    transport: str, redis_url: str, queue: str, client: redis.Redis
) -> None:
    """With stock kombu the message is gone; with ours it comes back after its lease."""
    publish(redis_url, queue, [{"i": 4}])
    died = subprocess.run(
        [sys.executable, "-c", KILL_AT_DELIVERY, redis_url, queue, transport],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert died.returncode == 9, died.stderr
    assert client.llen(queue) == 0  # it left the queue either way
    if transport == "stock":
        assert unacked_for(client, queue) == 0  # neither queued nor recorded: lost
        return
    assert unacked_for(client, queue) == 1
    time.sleep(3.5)  # its lease expires; any consumer's sweep brings it back
    assert consume(redis_url, queue, 1) == [{"i": 4}]
    assert unacked_for(client, queue) == 0


def test_restored_messages_keep_their_body_byte_for_byte(
    redis_url: str, queue: str, client: redis.Redis
) -> None:
    body = {"x": 0.1 + 0.2, "big": 12345678901234567890, "empty": [], "nested": {}}
    publish(redis_url, queue, [body])
    with connection(redis_url) as conn:
        held: list[Any] = []
        with Consumer(conn, [Queue(queue)], callbacks=[lambda b, m: held.append(m)]):
            wait_for(lambda: _drain(conn) or bool(held), timeout=10)
        (raw,) = [v for v in client.hvals("unacked") if queue.encode() in v]
        message, exchange, routing_key = json.loads(raw)
        assert (exchange, routing_key) == ("", queue)
        assert message["properties"]["delivery_info"]["routing_key"] == queue
        held[0].requeue()
    assert consume(redis_url, queue, 1) == [body]


DIE_WHILE_SCORING = textwrap.dedent(
    """
    import os, sys
    from kombu import Connection, Consumer, Queue
    from schemas import redis_transport
    url, queue = sys.argv[1], sys.argv[2]
    redis_transport.register()

    def on_message(body, message):
        message.channel.start_scoring([message.delivery_tag])
        os._exit(7)  # the model took the process down

    with Connection(url, transport_options={"visibility_timeout": 3}) as conn:
        with Consumer(conn, [Queue(queue)], callbacks=[on_message]):
            conn.drain_events(timeout=30)
    """
)


def test_a_scoring_mark_survives_the_worker_and_redelivery_until_acknowledged(
    redis_url: str, queue: str, client: redis.Redis
) -> None:
    """The mark is kept in Redis by delivery tag: a worker that dies while scoring leaves
    it, a restore keeps it (the redelivered message has the same tag), finishing scoring
    or acknowledging clears it."""
    publish(redis_url, queue, [{"i": 5}])
    died = subprocess.run(
        [sys.executable, "-c", DIE_WHILE_SCORING, redis_url, queue],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert died.returncode == 7, died.stderr
    (raw_tag,) = [t for t, raw in client.hgetall("unacked").items() if queue.encode() in raw]
    tag = raw_tag.decode() if isinstance(raw_tag, bytes) else raw_tag
    assert client.hget(names.UNFINISHED_KEY, tag) == b"1"
    time.sleep(3.5)  # its lease expires; the sweep brings it back, mark and all
    with connection(redis_url) as conn:
        held: list[Any] = []
        with Consumer(conn, [Queue(queue)], callbacks=[lambda b, m: held.append(m)]):
            wait_for(lambda: _drain(conn) or bool(held), timeout=15)
            message = held.pop()
            assert message.delivery_tag == tag
            assert message.delivery_info["redelivered"] is True
            channel = message.channel
            assert channel.unfinished([tag, "no-such-tag"]) == [1, 0]
            channel.start_scoring([tag])
            message.requeue()  # a restore, as after a death: the count stays
            wait_for(lambda: _drain(conn) or bool(held), timeout=15)
            message = held.pop()
            assert channel.unfinished([message.delivery_tag]) == [2]
            channel.start_scoring([message.delivery_tag])
            channel.finish_scoring([message.delivery_tag])  # scored, the worker alive
            assert channel.unfinished([message.delivery_tag]) == [0]
            channel.start_scoring([message.delivery_tag])
            message.ack()
    assert client.hget(names.UNFINISHED_KEY, tag) is None  # acknowledged: cleared
    assert unacked_for(client, queue) == 0 and client.llen(queue) == 0
