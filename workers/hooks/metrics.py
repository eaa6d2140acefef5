"""Prometheus metrics of one worker process: a batch hook with its own registry.

`WorkerMetrics` counts what every micro-batch became (requests by model, version, source
and status; dead letters by reason class), times it (queue wait per request, inference
per model call, the whole batch), and records each loaded version (load and warm-up
seconds, backend and device). With `SCORING_METRICS_PORT` set, `build_context` serves
it over HTTP (`serve`). Redis queue lengths are read with LLEN on each scrape; a Kafka
lag reader can be added with `add_kafka_lag` (it never joins the group).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from schemas import names
from schemas.settings import BrokerSettings
from workers.hooks import BatchReport
from workers.sources.base import Outcome, WorkItem

log = logging.getLogger(__name__)

# Seconds, from a millisecond to a minute: queue waits and model calls both fit.
SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Requests per micro-batch: powers of two up to past the largest SCORING_MAX_BATCH_SIZE.
SIZE_BUCKETS = tuple(float(2**i) for i in range(13))

STATUS_DEAD = "dead"  # dead-lettered: it can never be scored
STATUS_RETRY = "retry"  # not stored (the database refused the batch): sent back
UNKNOWN = "unknown"  # the model of a request that was never keyed
_SCORED = (names.STATUS_OK, names.STATUS_ERROR)  # rows that went through a model call

# A dead letter's reason, by the start of its text (workers/core/pipeline.py, sources).
REASON_CLASSES = (
    (re.compile(r"a tombstone"), "tombstone"),
    (re.compile(r"not UTF-8|not JSON|expected a JSON object|undecodable"), "not_json"),
    (re.compile(r"model .* has no "), "unknown_model"),
    (re.compile(r"unreadable chunk|chunk"), "bad_chunk"),
    (re.compile(r"gave up after \d+ attempts"), "retries_exhausted"),
    (re.compile(r"sha256|manifest|missing ", re.I), "artifact"),
    (re.compile(r"^[\w.]+: "), "bad_envelope"),
)


def reason_class(reason: str | None) -> str:
    """A dead letter's reason as one of a few label values (reasons themselves vary)."""
    for pattern, label in REASON_CLASSES:
        if reason and pattern.search(reason):
            return label
    return "other"


class RedisQueueLength(Collector):
    """`scoring_redis_queue_length{queue}`: LLEN of the requests queue (every priority
    step summed) and of the dead-letter queue, read on each scrape."""

    name = "scoring_redis_queue_length"

    def __init__(self, broker: BrokerSettings) -> None:
        self.broker = broker
        self._client: Any = None

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = self._family()
        url = self.broker.broker_url()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return [family]  # sentinel:// needs a sentinel lookup: not done on a scrape
        try:
            if self._client is None:
                self._client = self.broker.redis_client(socket_timeout=2)
            queue = self.broker.requests_queue
            steps = names.queue_lists(queue)
            pipe = self._client.pipeline(transaction=False)
            for key in [*steps, self.broker.dead_letter_queue]:
                pipe.llen(key)
            *lengths, dead = pipe.execute()
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
            log.debug("queue length not read: %s", exc)
            return [family]
        family.add_metric([queue], float(sum(lengths)))
        family.add_metric([self.broker.dead_letter_queue], float(dead))
        return [family]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            self.name, "Messages waiting on a Redis queue (LLEN at scrape time).", labels=["queue"]
        )


class KafkaLag(Collector):
    """`scoring_kafka_consumer_lag{topic,partition}`: the group's lag, from a reader that
    returns (topic, partition, lag) rows (workers.sources.kafka.lag, without joining)."""

    name = "scoring_kafka_consumer_lag"

    def __init__(self, read: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.read = read

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = self._family()
        try:
            for topic, partition, lag in self.read():
                family.add_metric([topic, str(partition)], float(lag))
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
            log.debug("kafka lag not read: %s", exc)
        return [family]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            self.name,
            "Requests the consumer group has not committed, per partition.",
            labels=["topic", "partition"],
        )


class WorkerMetrics:
    """The batch hook (before_batch / after_batch) and model-load listener of one process."""

    def __init__(self, worker: str, broker: BrokerSettings | None = None) -> None:
        self.worker = worker
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "scoring_requests",
            "Requests finished, by model, version, source and status "
            "(ok, invalid, error, expired, dead, retry).",
            ["model", "version", "source", "status"],
            registry=r,
        )
        self.dead_letters = Counter(
            "scoring_dead_letters",
            "Items dead-lettered by the pipeline, by source and reason class.",
            ["source", "reason"],
            registry=r,
        )
        self.batches = Counter(
            "scoring_batches",
            "Micro-batches scored, by whether they were stored.",
            ["stored"],
            registry=r,
        )
        self.batch_size = Histogram(
            "scoring_batch_size_requests",
            "Requests per micro-batch.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "scoring_batch_seconds",
            "Time to check, score and store one micro-batch.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "scoring_queue_wait_seconds",
            "From enqueue to the start of its model call, per scored request.",
            ["source"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "scoring_inference_seconds",
            "One model call (up to the version's max_batch_size requests).",
            ["model", "version"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "scoring_batches_in_flight", "Micro-batches being scored now (0 or 1).", registry=r
        )
        self.last_batch = Gauge(
            "scoring_last_batch_timestamp_seconds",
            "Unix time the last micro-batch finished (the process start until then).",
            registry=r,
        )
        self.last_batch.set(time.time())
        self.load_seconds = Gauge(
            "scoring_model_load_seconds",
            "Seconds to load a version (artifact check, build, backend).",
            ["model", "version", "backend"],
            registry=r,
        )
        self.warm_up_seconds = Gauge(
            "scoring_model_warmup_seconds",
            "Seconds to warm a version up (every batch bucket run).",
            ["model", "version", "backend"],
            registry=r,
        )
        self.load_failures = Counter(
            "scoring_model_load_failures",
            "Versions that could not load or warm up here.",
            ["model", "version", "backend"],
            registry=r,
        )
        self.switches = Counter(
            "scoring_model_switches",
            "Cut-overs to a newly active version (promote or rollback), by model and the "
            "version switched to; taken between two micro-batches once it was warm.",
            ["model", "version"],
            registry=r,
        )
        self.batch_limit = Gauge(
            "scoring_batch_limit",
            "Most requests one model call of a version holds: its max_batch_size, lowered "
            "after a call ran out of memory (until the process restarts).",
            ["model", "version"],
            registry=r,
        )
        self.model_info = Info(
            "scoring_model",
            "A version loaded in this process: its backend and device.",
            ["model", "version"],
            registry=r,
        )
        self.collectors: list[Collector] = [
            self.requests,
            self.dead_letters,
            self.batches,
            self.batch_size,
            self.batch_seconds,
            self.queue_wait,
            self.inference,
            self.in_flight,
            self.last_batch,
            self.load_seconds,
            self.warm_up_seconds,
            self.load_failures,
            self.switches,
            self.batch_limit,
            self.model_info,
        ]
        if broker is not None:
            self.add_collector(RedisQueueLength(broker))
        self._server: Any = None

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)
        self.collectors.append(collector)

    def add_drift(self, read: Callable[[], Any], ttl_s: float = 30.0) -> None:
        """Export the latest drift reports and the accuracy on ground truth (read from the
        database by `read`, at most every `ttl_s`: workers/hooks/drift_metrics.py)."""
        from workers.hooks.drift_metrics import DriftCollector

        self.add_collector(DriftCollector(read, ttl_s))

    def add_kafka_lag(self, read: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.add_collector(KafkaLag(read))

    # -- the hook ------------------------------------------------------------------------

    def before_batch(self, items: Sequence[WorkItem]) -> None:
        self.in_flight.set(1)

    def after_batch(
        self, items: Sequence[WorkItem], seconds: float, report: BatchReport | None = None
    ) -> None:
        report = report if report is not None else BatchReport()
        self.in_flight.set(0)
        self.last_batch.set(time.time())
        self.batch_size.observe(sum(item.size for item in items))
        self.batch_seconds.observe(seconds)
        self.batches.labels(stored=str(report.stored).lower()).inc()
        for item in report.dead:
            self.dead_letters.labels(item.source, reason_class(item.reason)).inc(item.size)
            self.requests.labels(UNKNOWN, UNKNOWN, item.source, STATUS_DEAD).inc(item.size)
        for call in report.calls:
            model, version = call["model_name"], str(call["model_version"])
            self.inference.labels(model, version).observe(call["inference_ms"] / 1000)
        for (model, number), size in report.batch_limits.items():
            self.batch_limit.labels(model, str(number)).set(size)
        if report.stored:
            self._count_rows(report.rows)
        else:
            # Nothing stored: every request not dead-lettered goes back to its source.
            back: Tally[str] = Tally()
            for item in items:
                if item.outcome is not Outcome.DEAD:
                    back[item.source] += item.size
            for source, n in back.items():
                self.requests.labels(UNKNOWN, UNKNOWN, source, STATUS_RETRY).inc(n)

    def _count_rows(self, rows: list[dict[str, Any]]) -> None:
        tally = Tally(
            (r["model_name"], str(r["model_version"]), r["source"], r["status"]) for r in rows
        )
        for labels, n in tally.items():
            self.requests.labels(*labels).inc(n)
        for row in rows:
            if row["status"] in _SCORED and row["queue_ms"] is not None:
                self.queue_wait.labels(row["source"]).observe(max(0.0, row["queue_ms"]) / 1000)

    # -- the model cache's listener ------------------------------------------------------

    def model_loaded(self, model: Any, load_s: float, warm_up_s: float) -> None:
        labels = (model.name, str(model.version), model.backend)
        self.load_seconds.labels(*labels).set(load_s)
        self.warm_up_seconds.labels(*labels).set(warm_up_s)
        self.batch_limit.labels(model.name, str(model.version)).set(model.max_batch_size)
        self.model_info.labels(model.name, str(model.version)).info(
            {"backend": model.backend, "device": model.device, "worker": self.worker}
        )

    def model_failed(self, name: str, version: int, backend: str) -> None:
        self.load_failures.labels(name, str(version), backend).inc()

    def model_switched(self, name: str, old: int, new: int) -> None:
        """The version watcher's listener: the scorer cut over from `old` to `new`."""
        self.switches.labels(name, str(new)).inc()

    # -- serving -------------------------------------------------------------------------

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # nosec B104: scraped
        """Serve /metrics on `port`; OSError if the port is taken (another process)."""
        from prometheus_client import start_http_server

        self._server, _ = start_http_server(port, addr=address, registry=self.registry)
        log.info("metrics on port %d", port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def metric_names(self) -> set[str]:
        """Every series name this registry can export (`_total`, `_bucket`, `_info`, …),
        whether or not it has samples yet: what dashboards and alerts may use."""
        return set(_series_names(self.collectors))


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def _series_names(collectors: Iterable[Collector]) -> Iterator[str]:
    for collector in collectors:
        describe = getattr(collector, "describe", None)
        families = describe() if describe is not None else collector.collect()
        for family in families:
            for suffix in _SUFFIXES.get(family.type, ("",)):
                yield family.name + suffix
