"""Load, lag and latency for `scoring bench stream`: a paced producer, a lag probe, rate windows.

Rates are judged by consumer lag (end offsets minus committed offsets, so only results that
are stored count): a rate is sustained when lag does not grow over the window. Latency is
the result event's timestamp (sent right after the results are stored) minus the time the
request was produced, both on this machine's clock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

# A window's rate holds when, at its end, the arm is less than this many seconds behind.
MAX_BEHIND_S = 1.0
# ...and the producer really offered the rate (else the window says nothing about the arm).
MIN_OFFERED = 0.97

Payload = Callable[[str], bytes]  # request_id -> wire message


@dataclass
class Arm:
    """One consumer under test: its topics, its group, and its process (for CPU time)."""

    name: str
    requests: str
    results: str
    group: str
    pid: int
    probe: LagProbe | None = field(default=None, repr=False)


class LagProbe:
    """Reads the group's lag without joining it (end offsets − committed offsets)."""

    def __init__(self, client: dict[str, Any], topic: str, group: str) -> None:
        self.consumer = KafkaConsumer(**client, group_id=group, enable_auto_commit=False)
        partitions = self.consumer.partitions_for_topic(topic) or set()
        self.tps = [TopicPartition(topic, p) for p in sorted(partitions)]

    def lag(self) -> int:
        ends = self.consumer.end_offsets(self.tps)
        return sum(ends[tp] - (self.consumer.committed(tp) or 0) for tp in self.tps)

    def wait_drained(self, timeout_s: float = 600, every_s: float = 0.25) -> float:
        """Block until the lag is 0; returns the monotonic time it was first seen at 0."""
        deadline = time.monotonic() + timeout_s
        while self.lag() > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"lag not drained within {timeout_s}s")
            time.sleep(every_s)
        return time.monotonic()

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class Load:
    """A producer that offers requests to a topic as fast as it can, or at a paced rate."""

    def __init__(self, client: dict[str, Any], payload: Payload) -> None:
        self.producer = KafkaProducer(**client, acks="all", linger_ms=1, batch_size=256 * 1024)
        self.payload = payload

    def burst(self, topic: str, prefix: str, n: int) -> None:
        for i in range(n):
            self.producer.send(topic, value=self.payload(f"{prefix}-{i}"))
        self.producer.flush()

    def paced(
        self,
        topic: str,
        prefix: str,
        rate: float,
        seconds: float,
        tick: Callable[[], None] = lambda: None,
    ) -> tuple[list[float], float]:
        """Send `rate` requests a second for `seconds`; returns send times (epoch ms) and
        the achieved rate. `tick` runs between sends (for sampling lag)."""
        sent: list[float] = []
        start = time.monotonic()
        end = start + seconds
        while (now := time.monotonic()) < end:
            due = int(rate * (now - start)) - len(sent)
            for _ in range(min(due, 1000)):
                sent.append(time.time() * 1000)
                self.producer.send(topic, value=self.payload(f"{prefix}-{len(sent) - 1}"))
            tick()
            time.sleep(0.002)
        self.producer.flush()
        return sent, len(sent) / (time.monotonic() - start)

    def close(self) -> None:
        self.producer.close()


class KcatLoad:
    """The same load offered through `kcat` (librdkafka), so that the load generator costs
    next to no CPU on a small machine: this process only writes lines to a pipe. kcat holds
    lines 100-200 ms before producing them, so it is for rates, not for latency."""

    def __init__(self, bootstrap: str, payload: Payload) -> None:
        self.bootstrap = bootstrap
        self.payload = payload

    def _kcat(self, topic: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["kcat", "-P", "-b", self.bootstrap, "-t", topic]
            + ["-X", "acks=all", "-X", "linger.ms=1", "-X", "socket.nagle.disable=true"],
            stdin=subprocess.PIPE,
        )

    def burst(self, topic: str, prefix: str, n: int) -> None:
        kcat = self._kcat(topic)
        assert kcat.stdin is not None
        for start in range(0, n, 1000):
            kcat.stdin.write(
                b"".join(
                    self.payload(f"{prefix}-{i}") + b"\n"
                    for i in range(start, min(n, start + 1000))
                )
            )
        kcat.stdin.close()
        if kcat.wait(300) != 0:
            raise RuntimeError(f"kcat exited with {kcat.returncode}")

    def paced(
        self,
        topic: str,
        prefix: str,
        rate: float,
        seconds: float,
        tick: Callable[[], None] = lambda: None,
    ) -> tuple[list[float], float]:
        kcat = self._kcat(topic)
        assert kcat.stdin is not None
        sent: list[float] = []
        start = time.monotonic()
        end = start + seconds
        while (now := time.monotonic()) < end:
            due = min(int(rate * (now - start)) - len(sent), 2000)
            if due > 0:
                stamp = time.time() * 1000
                lines = [self.payload(f"{prefix}-{len(sent) + i}") + b"\n" for i in range(due)]
                sent.extend([stamp] * due)
                kcat.stdin.write(b"".join(lines))
                kcat.stdin.flush()
            tick()
            time.sleep(0.001)
        achieved = len(sent) / (time.monotonic() - start)
        kcat.stdin.close()
        kcat.wait(300)
        return sent, achieved

    def close(self) -> None:
        pass


def make_load(client: dict[str, Any], payload: Payload) -> Load | KcatLoad:
    """kcat when it is installed and the broker needs no credentials, else kafka-python."""
    if shutil.which("kcat") and client.get("security_protocol", "PLAINTEXT") == "PLAINTEXT":
        return KcatLoad(",".join(client["bootstrap_servers"]), payload)
    return Load(client, payload)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain_rate(load: Load | KcatLoad, arm: Arm, prefix: str, target_s: float) -> dict[str, Any]:
    """How fast the arm works off a backlog: a probe burst, then one sized to ~target_s."""
    assert arm.probe is not None
    n, result = 200, {}
    for attempt in range(2):
        arm.probe.wait_drained()
        cpu0, started = process_cpu_s(arm.pid), time.monotonic()
        load.burst(arm.requests, f"{prefix}-{attempt}", n)
        took = arm.probe.wait_drained() - started
        result = {
            "events": n,
            "seconds": round(took, 2),
            "events_per_s": round(n / took, 1),
            "events_per_worker_cpu_s": round(n / max(process_cpu_s(arm.pid) - cpu0, 1e-3), 1),
        }
        if took >= target_s / 2:
            break
        n = int(min(max(n / took * target_s, n), 200_000))
    return result


def rate_window(
    load: Load | KcatLoad, arm: Arm, prefix: str, rate: float, seconds: float
) -> tuple[dict[str, Any], list[float]]:
    """Offer `rate` for `seconds`; sustained if the lag did not grow (see MAX_BEHIND_S)."""
    assert arm.probe is not None
    probe = arm.probe
    probe.wait_drained()
    samples: list[tuple[float, int]] = []
    last = [0.0]

    def tick() -> None:
        if time.monotonic() - last[0] >= 1.0:
            last[0] = time.monotonic()
            samples.append((last[0], probe.lag()))

    cpu0, t0 = process_cpu_s(arm.pid), time.monotonic()
    sent, offered = load.paced(arm.requests, prefix, rate, seconds, tick)
    cpu_s, wall_s = process_cpu_s(arm.pid) - cpu0, time.monotonic() - t0
    lag_end = probe.lag()
    half = [s for s in samples if s[0] >= samples[0][0] + seconds / 2] if samples else []
    window = {
        "rate": round(rate, 1),
        "offered_per_s": round(offered, 1),
        "lag_end": lag_end,
        "lag_max": max([lag for _, lag in samples] + [lag_end]),
        "lag_slope_per_s": round(_slope(half), 1),
        "worker_cpu_pct": round(100 * cpu_s / wall_s, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    window["producer_limited"] = offered < MIN_OFFERED * rate
    window["sustained"] = not window["producer_limited"] and lag_end <= rate * MAX_BEHIND_S
    return window, sent


def sustained_rate(
    load: Load | KcatLoad,
    arm: Arm,
    prefix: str,
    start: float,
    seconds: float,
    max_windows: int,
) -> tuple[float | None, list[dict[str, Any]]]:
    """The highest rate that held for a whole window. From near the drain rate it steps up
    by 25% while rates hold (down by 20% while they fail); once it has one of each, it
    tries the midpoint until the windows run out."""
    held: float | None = None
    failed: float | None = None
    rate, windows = start, []
    for i in range(max_windows):
        window, _ = rate_window(load, arm, f"{prefix}-w{i}", rate, seconds)
        windows.append(window)
        if window["sustained"]:
            held = max(held or 0.0, rate)
        else:
            failed = rate if failed is None else min(failed, rate)
        if held is not None and failed is not None:
            if failed / held < 1.05:
                break
            rate = (held + failed) / 2
        else:
            rate = rate * 1.25 if failed is None else rate * 0.8
    return held, windows


def latency(
    client: dict[str, Any], arm: Arm, prefix: str, sent: list[float], since_ms: float
) -> dict[str, Any]:
    """Produce → stored-and-published latency of every request of one window."""
    consumer = KafkaConsumer(**client, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(arm.results, p) for p in consumer.partitions_for_topic(arm.results)]
        consumer.assign(tps)
        starts = consumer.offsets_for_times({tp: int(since_ms) for tp in tps})
        ends = consumer.end_offsets(tps)
        for tp in tps:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found else ends[tp])
        got: dict[int, float] = {}
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for batch in consumer.poll(timeout_ms=500, max_records=10_000).values():
                for rec in batch:
                    rid = json.loads(rec.value)["request_id"]
                    if rid.startswith(prefix + "-"):
                        seq = int(rid.rsplit("-", 1)[1])
                        got.setdefault(seq, rec.timestamp - sent[seq])
    finally:
        consumer.close(autocommit=False)
    values = sorted(got.values())
    return {
        "events": len(sent),
        "missing": len(sent) - len(values),
        "p50_ms": _pct(values, 50),
        "p99_ms": _pct(values, 99),
        "max_ms": round(values[-1], 1) if values else None,
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(len(values) * q / 100))], 1)


def _slope(samples: list[tuple[float, int]]) -> float:
    """Least-squares growth of lag per second over the samples."""
    if len(samples) < 2:
        return 0.0
    xs, ys = [t for t, _ in samples], [float(lag) for _, lag in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0
