"""The order an e2e run goes in: its own database and queues, the arms that need no worker
first, then the product's workers, then the naive baseline's worker; all cleaned up."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from celery import Celery
from sqlalchemy import Engine, text

from bench import e2e_arms as arms_mod
from bench.e2e import Plan, repeat
from bench.e2e_models import BenchModel
from bench.e2e_stack import (
    WorkerProcs,
    clear_results,
    count_rows,
    delete_queues,
    scoring_worker,
    scratch_database,
    start_processes,
    wait_until,
)
from schemas.db import make_engine
from schemas.tables import ModelVersion
from scoring.settings import Settings
from workers import registry
from workers.celery_app import create_app
from workers.runtime import load_model


@dataclass(frozen=True)
class Queues:
    """Queues of this run only: `one` is consumed by worker 0, `all` by every worker."""

    one: str
    all: str
    enqueue: str
    naive: str
    dead: str

    @classmethod
    def for_tag(cls, tag: str) -> Queues:
        base = f"bench-e2e-{tag}"
        return cls(f"{base}-one", f"{base}-all", f"{base}-enq", f"{base}-naive", f"{base}.dlq")


@dataclass
class Stack:
    """What the arms share: database, settings per queue, registered versions, apps."""

    engine: Engine
    settings: Settings
    queues: Queues
    records: dict[str, ModelVersion]
    work: Path

    def app(self, queue: str) -> Celery:
        return create_app(self.settings.model_copy(update={"requests_queue": queue}))

    def worker_env(self) -> dict[str, str]:
        s = self.settings
        return {
            "SCORING_DATABASE_URL": s.database_url,
            "SCORING_BROKER_URL": s.broker_url,
            "SCORING_MODEL_STORE": str(s.model_store),
            "SCORING_REQUESTS_QUEUE": s.requests_queue,
            "SCORING_DEAD_LETTER_QUEUE": s.dead_letter_queue,
        }


def run(
    plan: Plan, settings: Settings, models: list[BenchModel], work: Path, tag: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every arm, in order; returns (arms, context for the report)."""
    queues = Queues.for_tag(tag)
    load_at_start = os.getloadavg()
    with scratch_database(settings.database_url) as url, _queues_dropped(settings, queues):
        bench_settings = settings.model_copy(
            update={
                "database_url": url,
                "model_store": (work / "store").resolve(),
                "requests_queue": queues.all,
                "dead_letter_queue": queues.dead,
            }
        )
        engine = make_engine(url)
        try:
            records = {
                m.name: _register(engine, bench_settings, m, work, plan.quick) for m in models
            }
            stack = Stack(engine, bench_settings, queues, records, work)
            arms = _no_worker_arms(plan, stack, models)
            if plan.wants("product") or plan.wants("product_1x1") or plan.wants("per_request"):
                with _product_workers(stack):
                    for bench_model in models:
                        arms[bench_model.name].update(_product_arms(plan, stack, bench_model, arms))
            demo = next((m for m in models if not m.model_bound), None)
            if demo is not None and plan.wants("naive"):
                arms[demo.name]["naive"] = _naive_arm(plan, stack, demo)
            machine = _machine(engine, load_at_start)
            return arms, {"machine": machine, "batch_sizes": _batch_sizes(records)}
        finally:
            engine.dispose()


@contextmanager
def _queues_dropped(settings: Settings, queues: Queues) -> Iterator[None]:
    try:
        yield
    finally:
        delete_queues(settings.broker_url, *vars(queues).values())


def _register(
    engine: Engine, settings: Settings, model: BenchModel, work: Path, quick: bool
) -> ModelVersion:
    artifact = model.build_artifact(work / f"artifact-{model.name}", quick)
    return registry.register(engine, settings.model_store, model.name, artifact)


def _no_worker_arms(plan: Plan, stack: Stack, models: list[BenchModel]) -> dict[str, Any]:
    """Enqueue, sink alone, ORM per row, and each model's runtime alone."""
    first = models[0]
    out: dict[str, Any] = {m.name: {} for m in models}
    if plan.wants("enqueue"):
        app = stack.app(stack.queues.enqueue)
        requests = first.requests(plan.rows, "enq", seed=5)
        out["enqueue"] = repeat(
            plan.reps, None, lambda _: arms_mod.enqueue(app, requests, plan.budget(), plan.chunk)
        )
    rows = arms_mod.result_rows(plan.rows, "sink", stack.records[first.name])
    if plan.wants("sink"):
        out["sink"] = repeat(
            plan.reps, stack.engine, lambda _: arms_mod.sink(stack.engine, rows, plan.budget())
        )
    if plan.wants("orm_per_row"):
        out["orm_per_row"] = repeat(
            plan.reps,
            stack.engine,
            lambda _: arms_mod.orm_per_row(stack.engine, rows, plan.budget()),
        )
    clear_results(stack.engine)
    if plan.wants("inprocess"):
        for bench_model in models:
            out[bench_model.name]["inprocess"] = _inprocess_arm(plan, stack, bench_model)
    return out


def _inprocess_arm(plan: Plan, stack: Stack, model: BenchModel) -> dict[str, Any]:
    """The runtime alone with 1 torch thread and with one per core; the better is the
    ceiling (a small model loses to thread hand-offs, a transformer gains)."""
    loaded = load_model(stack.records[model.name])
    inputs = [inputs for _, inputs, _ in model.rows(min(plan.rows, 4096), 6)]
    by_threads = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        by_threads[threads] = repeat(
            plan.reps, None, lambda _: arms_mod.inprocess(loaded, inputs, plan.budget())
        )
    best = max(by_threads, key=lambda t: by_threads[t]["rows_per_s"])
    return {**by_threads[best], "torch_threads": best, "by_threads": by_threads}


@contextmanager
def _product_workers(stack: Stack) -> Iterator[WorkerProcs]:
    """Worker 0 consumes `one` and `all`, worker 1 only `all`: one set of processes serves
    both the 1-worker and the 2-worker arms (an idle worker just blocks on Redis)."""
    q = stack.queues
    procs = scoring_worker(stack.worker_env(), [[q.one, q.all], [q.all]], stack.work / "logs")
    try:
        yield procs
    finally:
        procs.stop()


def _product_arms(
    plan: Plan, stack: Stack, model: BenchModel, arms: dict[str, Any]
) -> dict[str, Any]:
    record = stack.records[model.name]
    out: dict[str, Any] = {}
    faster = arms[model.name].get("inprocess", {}).get("rows_per_s")
    for arm, queue in (("product", stack.queues.all), ("product_1x1", stack.queues.one)):
        if not plan.wants(arm):
            continue
        rows = plan.rows_for(faster)
        data = model.write_csv(stack.work / f"{model.name}-{rows}.csv", rows, seed=1)
        app = stack.app(queue)

        def one(_: int, app: Celery = app, data: Path = data) -> arms_mod.Rep:
            return arms_mod.bulk(app, stack.engine, data, record, plan.chunk, plan.stall_s)

        out[arm] = repeat(plan.reps, stack.engine, one)
        out[arm]["rows"] = rows
        faster = out[arm]["rows_per_s"]
    if not model.model_bound and plan.wants("per_request"):
        out["per_request"] = _per_request_arm(plan, stack, model)
    return out


def _per_request_arm(plan: Plan, stack: Stack, model: BenchModel) -> dict[str, Any]:
    send = arms_mod.per_request_sender(stack.app(stack.queues.all))

    def one(rep: int) -> arms_mod.Rep:
        requests = model.requests(plan.rows, f"pr{rep}", seed=2)
        return arms_mod.paced(
            send, requests, lambda: count_rows(stack.engine), plan.budget(), window=2000
        )

    return repeat(plan.reps, stack.engine, one)


def _naive_arm(plan: Plan, stack: Stack, model: BenchModel) -> dict[str, Any]:
    """The naive worker (Celery defaults: prefork, one child per core) on its own queue."""
    from bench.naive_app import TASK
    from bench.naive_app import create_app as naive_app

    app = naive_app(stack.settings, stack.queues.naive)
    send = arms_mod.naive_sender(app, TASK)
    procs = start_processes(
        [[sys.executable, "-m", "bench.naive_app", stack.queues.naive]],
        [stack.worker_env()],
        stack.work / "logs",
        " ready.",
    )
    try:
        clear_results(stack.engine)
        warm = model.requests(20, "warm", seed=3)
        send(warm)  # each child loads its model on first use
        wait_until(lambda: count_rows(stack.engine), len(warm), plan.stall_s)

        def one(rep: int) -> arms_mod.Rep:
            requests = model.requests(plan.rows, f"nv{rep}", seed=2)
            return arms_mod.paced(
                send, requests, lambda: count_rows(stack.engine), plan.budget(), window=1000
            )

        return repeat(plan.reps, stack.engine, one)
    finally:
        procs.stop()


def _batch_sizes(records: dict[str, ModelVersion]) -> dict[str, int]:
    return {name: r.max_batch_size for name, r in records.items()}


def _machine(engine: Engine, load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    """What the figures depend on; the load averages say how busy the box was around it."""
    with engine.connect() as conn:
        pg = conn.execute(text("SHOW server_version")).scalar_one()
    model_name = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "cpu_model": model_name,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "postgresql": pg,
        "platform": platform.platform(),
    }
