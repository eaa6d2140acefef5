"""The `scoring bench stream` run: its own database, topics and worker processes, then for each
model and arm (stream worker, one-at-a-time baseline) the drain rate, the highest rate held
for a whole window, and latency at half of it."""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stream_load import (
    Arm,
    KcatLoad,
    LagProbe,
    Load,
    Payload,
    drain_rate,
    latency,
    make_load,
    rate_window,
    sustained_rate,
)
from schemas import names as c
from schemas.settings import Settings


@dataclass(frozen=True)
class Options:
    window_s: float = 30.0
    max_windows: int = 6
    models: tuple[str, ...] = (c.DEMO_MODEL, c.TEXT_MODEL)
    baseline: bool = True
    torch_threads: int = 1
    text_backend: str = "eager"
    profile: bool = False
    profile_to: Path | None = None  # where the raw py-spy samples are written
    drain_s: float = 10.0


@dataclass
class Stack:
    settings: Settings
    client: dict[str, Any]
    workdir: Path
    database_url: str
    run_id: str
    topics: list[str]
    procs: list[subprocess.Popen[bytes]]


def run(opts: Options, log: Any = print) -> dict[str, Any]:
    """Everything `scoring bench stream` reports, as a JSON-ready dict."""
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}
    report: dict[str, Any] = {"bench": "stream", "machine": _machine(), "options": options}
    with _stack() as stack:
        payloads, skipped = _register(stack, opts.models, opts.text_backend)
        report["skipped"] = skipped
        threads = opts.torch_threads
        arms = [_start(stack, "stream", threads)]
        arms += [_start(stack, "batch1", threads)] if opts.baseline else []
        report["models"] = {}
        for model, payload in payloads.items():
            # kcat offers the throughput load (it costs next to no CPU); the latency window
            # uses kafka-python, because kcat holds lines 100-200 ms before producing them.
            loads = (make_load(stack.client, payload), Load(stack.client, payload))
            report["load_generator"] = {"rate": type(loads[0]).__name__, "latency": "Load"}
            try:
                report["models"][model] = {
                    arm.name: _measure(stack, loads, arm, model, opts, log) for arm in arms
                }
            finally:
                for load in loads:
                    load.close()
        report["kafka_python_alone"] = _kafka_alone(stack, payloads[c.DEMO_MODEL], arms[0])
        if opts.profile and c.DEMO_MODEL in report["models"]:
            from bench.stream_profile import profile_stream

            rate = report["models"][c.DEMO_MODEL]["stream"]["sustained_per_s"] or 1000.0
            report["profile"] = profile_stream(
                stack.client, payloads[c.DEMO_MODEL], arms[0], rate, opts.profile_to
            )
        report["transformer_bound"] = _transformer_bound(stack, report)
        for arm in arms:
            assert arm.probe is not None
            arm.probe.close()
    report["ratios"] = _ratios(report)
    report["targets"] = _targets(report)
    return report


def _measure(
    stack: Stack,
    loads: tuple[Load | KcatLoad, Load],
    arm: Arm,
    model: str,
    opts: Options,
    log: Any,
) -> dict[str, Any]:
    prefix = f"{model}-{arm.name}"
    load = loads[0]
    drain = drain_rate(load, arm, f"{prefix}-drain", opts.drain_s)
    log(f"{model}/{arm.name}: drains {drain['events_per_s']:.0f}/s; searching sustained rate")
    best, windows = sustained_rate(
        load, arm, prefix, 0.9 * drain["events_per_s"], opts.window_s, opts.max_windows
    )
    half = (best or min(w["rate"] for w in windows)) / 2
    since_ms = time.time() * 1000 - 1000
    window, sent = rate_window(loads[1], arm, f"{prefix}-lat", half, opts.window_s)
    assert arm.probe is not None
    arm.probe.wait_drained()
    lat = latency(stack.client, arm, f"{prefix}-lat", sent, since_ms)
    log(
        f"{model}/{arm.name}: sustained {best}/s; at {half:.0f}/s p50 {lat['p50_ms']} ms, "
        f"p99 {lat['p99_ms']} ms"
    )
    lat["stages_p50_ms"] = _stages(stack, f"{prefix}-lat", arm.name)
    return {
        "drain": drain,
        "sustained_per_s": round(best, 1) if best else None,
        "windows": windows,
        "latency_at_half_load": {"rate": round(half, 1), "window": window, **lat},
    }


def _stages(stack: Stack, prefix: str, worker: str) -> dict[str, float | None]:
    """Where the latency went, from the result rows: produce → batch start (queue_ms) and
    the batch's inference time (medians)."""
    from sqlalchemy import text

    from schemas.db import make_engine

    engine = make_engine(stack.database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT queue_ms, inference_ms, batch_id FROM score_results "
                "WHERE request_id LIKE :p AND worker = :w"
            ),
            {"p": f"{prefix}-%", "w": worker},
        ).all()
    engine.dispose()

    def median(values: list[float]) -> float | None:
        values = sorted(v for v in values if v is not None)
        return round(values[len(values) // 2], 1) if values else None

    return {
        "queue": median([r[0] for r in rows]),
        "inference": median([r[1] for r in rows]),
        "requests_per_batch": round(len(rows) / max(len({r[2] for r in rows}), 1), 1),
    }


@contextmanager
def _stack() -> Iterator[Stack]:
    from kafka.admin import KafkaAdminClient

    settings = Settings.from_env()
    client = settings.kafka.client_config()
    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    run_id = uuid.uuid4().hex[:8]
    url, drop = _temp_database(settings.database.sqlalchemy_url(), workdir, run_id)
    admin = KafkaAdminClient(**client, client_id="scoring-bench")
    stack = Stack(settings, client, workdir, url, run_id, [], [])
    try:
        yield stack
    finally:
        for proc in stack.procs:
            proc.terminate()
        for proc in stack.procs:
            proc.wait(60)
        if stack.topics:
            admin.delete_topics(stack.topics, raise_errors=False)
        admin.close()
        drop()
        shutil.rmtree(workdir, ignore_errors=True)


def _temp_database(url: str, workdir: Path, run_id: str) -> tuple[str, Any]:
    """A migrated database of this run's own (PostgreSQL if configured, else SQLite)."""
    from contextlib import ExitStack

    from schemas.db import scratch_database, upgrade

    if not url.startswith("postgresql"):
        own = f"sqlite:///{workdir / 'bench.db'}"
        upgrade(own)
        return own, lambda: None
    cleanup = ExitStack()
    own = cleanup.enter_context(scratch_database(url, f"bench_stream_{run_id}"))
    return own, cleanup.close


def _register(
    stack: Stack, models: tuple[str, ...], text_backend: str = "eager"
) -> tuple[dict[str, Payload], dict[str, str]]:
    """Register the demo classifier (and MiniLM if its code is installed); request makers."""
    from schemas.db import make_engine
    from workers.runtime import registry
    from workers.runtime.models.demo.build import build_artifact, sample_rows

    engine = make_engine(stack.database_url)
    store = stack.workdir / "store"
    registry.register(engine, store, c.DEMO_MODEL, build_artifact(stack.workdir / "demo"))
    names, rows, _ = sample_rows(2000, 7)
    demo = [json.dumps({k: float(v) for k, v in zip(names, r, strict=True)}) for r in rows]
    payloads, skipped = {c.DEMO_MODEL: _payload(c.DEMO_MODEL, demo)}, {}
    if c.TEXT_MODEL in models:
        try:
            from workers.runtime.models.minilm.build import build_artifact as build_text
            from workers.runtime.models.minilm.build import sample_texts

            text = registry.register(
                engine, store, c.TEXT_MODEL, build_text(stack.workdir / "text")
            )
            if text_backend != "eager":
                registry.set_backend(engine, c.TEXT_MODEL, text.version, text_backend)
            texts = [json.dumps({"text": t}) for t, _ in sample_texts(2000, 7)]
            payloads[c.TEXT_MODEL] = _payload(c.TEXT_MODEL, texts)
        except Exception as exc:  # noqa: BLE001 - the text model is optional here
            skipped[c.TEXT_MODEL] = f"{type(exc).__name__}: {exc}"
    engine.dispose()
    return {m: p for m, p in payloads.items() if m in models or m == c.DEMO_MODEL}, skipped


def _payload(model: str, inputs: list[str]) -> Payload:
    cycle = itertools.cycle(inputs)
    head = '{"request_id":"%s","model":"' + model + '","inputs":%s}'
    return lambda rid: (head % (rid, next(cycle))).encode()


def _start(stack: Stack, name: str, torch_threads: int) -> Arm:
    """A worker process of its own with its own topics and group; waits until it is assigned."""
    from kafka.admin import KafkaAdminClient, NewTopic

    requests, results = f"bench-{name}-{stack.run_id}", f"bench-{name}-res-{stack.run_id}"
    admin = KafkaAdminClient(**stack.client, client_id="scoring-bench")
    admin.create_topics([NewTopic(requests, 4, 1), NewTopic(results, 4, 1)])
    admin.close()
    stack.topics += [requests, results]
    group = f"bench-{name}-{stack.run_id}"
    env = {
        **os.environ,
        "SCORING_DATABASE_URL": stack.database_url,
        "SCORING_MODEL_STORE": str(stack.workdir / "store"),
        "SCORING_KAFKA_TOPIC": requests,
        "SCORING_KAFKA_RESULTS_TOPIC": results,
        "SCORING_KAFKA_DLQ_TOPIC": f"{requests}.dlq",
        "SCORING_KAFKA_GROUP": group,
        "SCORING_TORCH_THREADS": str(torch_threads),
        "SCORING_WORKER_NAME": name,
    }
    command = ["scoring.cli", "stream"] if name == "stream" else ["bench.stream_baseline"]
    log_path = stack.workdir / f"{name}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *command], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    stack.procs.append(proc)
    deadline = time.monotonic() + 300
    while f"partitions assigned: {requests}" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} worker did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    arm = Arm(name, requests, results, group, proc.pid)
    arm.probe = LagProbe(stack.client, requests, group)
    return arm


def _kafka_alone(stack: Stack, payload: Payload, arm: Arm) -> dict[str, Any]:
    """kafka-python's own rates here, with no scoring: is the client the limit?"""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    out: dict[str, Any] = {}
    for check_crcs in (True, False):
        consumer = KafkaConsumer(**stack.client, group_id=None, check_crcs=check_crcs)
        tps = [TopicPartition(arm.requests, p) for p in range(4)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        n, started = 0, time.monotonic()
        while n < 200_000 and time.monotonic() - started < 20:
            polled = consumer.poll(timeout_ms=1000, max_records=5000)
            if not polled and n:
                break
            n += sum(len(b) for b in polled.values())
        key = "consume_per_s" if check_crcs else "consume_no_crc_check_per_s"
        out[key] = round(n / (time.monotonic() - started), 1)
        consumer.close(autocommit=False)
    load = Load(stack.client, payload)
    started = time.monotonic()
    load.burst(f"{arm.requests}.dlq", "alone", 50_000)
    out["produce_per_s"] = round(50_000 / (time.monotonic() - started), 1)
    load.close()
    stack.topics.append(f"{arm.requests}.dlq")
    from kafka.record import util

    out["crc32c_in_c"] = util._crc32c is not getattr(util, "crc32c_py", None)
    return out


def _transformer_bound(stack: Stack, report: dict[str, Any]) -> dict[str, Any] | None:
    """max wait + 3 × one batch's inference time, where one batch's time is the median of
    the transformer batches run in its half-load latency window (all batches for reference)."""
    text_report = report["models"].get(c.TEXT_MODEL, {}).get("stream")
    if not text_report:
        return None
    from sqlalchemy import text

    from schemas.db import make_engine

    engine = make_engine(stack.database_url)
    with engine.connect() as conn:
        every = sorted(
            float(v)
            for (v,) in conn.execute(
                text(
                    "SELECT inference_ms FROM batch_metrics "
                    "WHERE model_name = :m AND worker LIKE 'stream@%'"
                ),
                {"m": c.TEXT_MODEL},
            )
        )
    engine.dispose()
    half_load = text_report["latency_at_half_load"]["stages_p50_ms"]["inference"]
    if half_load is None:
        return None
    wait = stack.settings.batching.max_wait_ms
    return {
        "max_wait_ms": wait,
        "batch_inference_ms_at_half_load": half_load,
        "bound_ms": round(wait + 3 * half_load, 1),
        "batch_inference_ms_all_windows": round(every[len(every) // 2], 1) if every else None,
    }


def _ratios(report: dict[str, Any]) -> dict[str, Any]:
    demo = report["models"].get(c.DEMO_MODEL, {})
    stream = (demo.get("stream") or {}).get("sustained_per_s")
    batch1 = (demo.get("batch1") or {}).get("sustained_per_s")
    text = report["models"].get(c.TEXT_MODEL, {}).get("stream")
    return {
        "stream_events_per_s": stream,
        "stream_vs_batch1": round(stream / batch1, 1) if stream and batch1 else None,
        "p99_ms_at_half_load": text["latency_at_half_load"]["p99_ms"] if text else None,
    }


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    r, bound = report["ratios"], report.get("transformer_bound")
    return {
        "stream_events_per_s>=5000": bool(r["stream_events_per_s"])
        and r["stream_events_per_s"] >= 5000,
        "stream_vs_batch1>=10": bool(r["stream_vs_batch1"]) and r["stream_vs_batch1"] >= 10,
        "p99_ms_at_half_load<=bound": (
            None
            if bound is None or r["p99_ms_at_half_load"] is None
            else r["p99_ms_at_half_load"] <= bound["bound_ms"]
        ),
    }


def _machine() -> dict[str, Any]:
    import kafka
    import torch

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "kafka_python": kafka.__version__,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }
