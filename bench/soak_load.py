"""Steady producers for `scoring bench soak`: one thread per source offers requests with
deterministic ids (`<prefix>-<n>`) at a fixed rate and counts what the broker confirmed.

A send the broker did not confirm (Redis down for its restart, a Kafka error) is sent
again, the same ids, until it is confirmed: ids stay contiguous, so "events in" is the
next id, and a second copy of a request that did arrive is an upsert that writes nothing.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

Send = Callable[[list[dict[str, Any]]], None]  # raises when the broker did not confirm

TICK_S = 0.1


class Paced(threading.Thread):
    """Offers `rate` requests a second (one send per tick) until `stop()`."""

    def __init__(self, prefix: str, rate: float, send: Send, inputs: list[dict[str, float]]):
        super().__init__(name=f"soak-{prefix}", daemon=True)
        self.prefix, self.rate, self.send = prefix, rate, send
        self.inputs = itertools.cycle(inputs)
        self.acked = 0  # requests 0 .. acked-1 are confirmed by the broker
        self.failed_sends = 0
        self.longest_unconfirmed_s = 0.0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def request(self, n: int) -> dict[str, Any]:
        return {"request_id": f"{self.prefix}-{n}", "model": "demo", "inputs": next(self.inputs)}

    def run(self) -> None:
        started = time.monotonic()
        try:
            while not self._halt.is_set():
                due = int(self.rate * (time.monotonic() - started))
                if due > self.acked:
                    self._confirmed([self.request(n) for n in range(self.acked, due)])
                self._halt.wait(TICK_S)
        except BaseException as exc:  # noqa: BLE001 - reported by the run, never swallowed
            self.error = exc

    def _confirmed(self, batch: list[dict[str, Any]]) -> None:
        """Send until the broker confirms (the run's end does not cut a send short)."""
        first_failure = None
        while True:
            try:
                self.send(batch)
            except Exception:  # noqa: BLE001 - the broker is away: send the same ids again
                self.failed_sends += 1
                first_failure = first_failure or time.monotonic()
                time.sleep(0.2)
                continue
            if first_failure is not None:
                waited = time.monotonic() - first_failure
                self.longest_unconfirmed_s = max(self.longest_unconfirmed_s, round(waited, 2))
            self.acked += len(batch)
            return

    def stop(self, timeout: float = 120) -> None:
        self._halt.set()
        self.join(timeout)
        if self.is_alive():
            raise RuntimeError(f"{self.name}: a send was not confirmed within {timeout:.0f}s")
        if self.error is not None:
            raise RuntimeError(f"{self.name} failed: {self.error!r}") from self.error


def redis_send(broker_url: str, queue: str, per_message: int) -> tuple[Send, Callable[[], None]]:
    """Celery task messages on `queue` (what `scoring produce` sends); and a closer."""
    from pydantic import SecretStr

    from producers.redis_producer import RedisProducer
    from schemas.broker import celery_app
    from schemas.settings import BrokerSettings

    broker = BrokerSettings(url=SecretStr(broker_url), requests_queue=queue)
    app = celery_app(broker, name="scoring-soak")
    producer = RedisProducer(app, queue)

    def send(batch: list[dict[str, Any]]) -> None:
        producer.send(batch, per_message=per_message, validate=False)

    return send, app.close


def kafka_send(kafka: Any, topic: str) -> tuple[Send, Callable[[], None]]:
    """Confirmed, keyed records on `topic` (what `scoring produce --kafka` sends)."""
    from producers.kafka_producer import EventProducer

    producer = EventProducer(kafka, topic=topic).open()

    def send(batch: list[dict[str, Any]]) -> None:
        if producer.send(batch, validate=False) != len(batch):
            raise RuntimeError("Kafka confirmed fewer records than were sent")

    return send, producer.close


def demo_inputs(n: int = 2000, seed: int = 7) -> list[dict[str, float]]:
    from workers.runtime.models.demo.build import sample_rows

    names, rows, _ = sample_rows(n, seed)
    return [{k: float(v) for k, v in zip(names, row, strict=True)} for row in rows]
