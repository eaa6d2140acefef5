"""The order an e2e run goes in: its own database and queues, the arms that need no worker
first, then the product's workers, then the naive baseline's worker; all cleaned up."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from celery import Celery
from sqlalchemy import Engine, text

from bench import e2e_arms as arms_mod
from bench.e2e import Plan, summarise
from bench.e2e_models import BenchModel
from bench.e2e_stack import (
    CpuMeter,
    WorkerProcs,
    clear_results,
    count_rows,
    delete_queues,
    scoring_worker,
    scratch_database,
    start_processes,
    wait_until,
)
from schemas.broker import celery_app
from schemas.db import make_engine
from schemas.settings import Settings
from schemas.tables import ModelVersion
from workers.runtime import registry
from workers.runtime.loaded import LoadedModel, load_model


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
        return celery_app(self.settings.replace(broker={"requests_queue": queue}).broker)

    def worker_env(self) -> dict[str, str]:
        s = self.settings
        return {
            "SCORING_DATABASE_URL": s.database.sqlalchemy_url(),
            "SCORING_BROKER_URL": s.broker.broker_url(),
            "SCORING_MODEL_STORE": str(s.runtime.model_store),
            "SCORING_REQUESTS_QUEUE": s.broker.requests_queue,
            "SCORING_DEAD_LETTER_QUEUE": s.broker.dead_letter_queue,
        }


@dataclass(frozen=True)
class Arm:
    """One arm of the run: `one(rep)` runs a repetition, from empty tables if `clears`."""

    group: str  # a model's name, or "-" for arms that do not depend on the model
    name: str
    one: Callable[[int], arms_mod.Rep]
    clears: bool = True


Results = dict[tuple[str, str], list[arms_mod.Rep]]


def run(
    plan: Plan, settings: Settings, models: list[BenchModel], work: Path, tag: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every arm once per repetition, in order; returns (arms, context for the report)."""
    queues = Queues.for_tag(tag)
    load_at_start, meter = os.getloadavg(), CpuMeter()
    server = settings.database.sqlalchemy_url()
    with scratch_database(server) as url, _queues_dropped(settings, queues):
        bench_settings = settings.replace(
            database={"url": url},
            runtime={"model_store": (work / "store").resolve()},
            broker={"requests_queue": queues.all, "dead_letter_queue": queues.dead},
        )
        engine = make_engine(url)
        try:
            records = {
                m.name: _register(engine, bench_settings, m, work, plan.quick) for m in models
            }
            stack = Stack(engine, bench_settings, queues, records, work)
            results: Results = defaultdict(list)
            arms = _arms(plan, stack, models, results)
            with _workers(plan, stack, models):
                for rep in range(plan.reps):
                    for arm in arms:
                        if arm.clears:
                            clear_results(engine)
                        results[(arm.group, arm.name)].append(arm.one(rep))
            machine = _machine(engine, load_at_start, meter)
            return _report_arms(results), {"machine": machine, "batch_sizes": _batch_sizes(records)}
        finally:
            engine.dispose()


@contextmanager
def _queues_dropped(settings: Settings, queues: Queues) -> Iterator[None]:
    try:
        yield
    finally:
        delete_queues(settings.broker.broker_url(), *vars(queues).values())


def _register(
    engine: Engine, settings: Settings, model: BenchModel, work: Path, quick: bool
) -> ModelVersion:
    artifact = model.build_artifact(work / f"artifact-{model.name}", quick)
    return registry.register(engine, settings.runtime.model_store, model.name, artifact)


def _median(results: Results, group: str, name: str) -> float | None:
    runs = results.get((group, name))
    return statistics.median(r.rows_per_s for r in runs) if runs else None


def _arms(plan: Plan, stack: Stack, models: list[BenchModel], results: Results) -> list[Arm]:
    """The arms wanted, in the order each repetition runs them."""
    first = models[0]
    arms: list[Arm] = []
    budget, engine = plan.budget(), stack.engine
    if plan.wants("enqueue"):
        app = stack.app(stack.queues.enqueue)
        requests = first.requests(plan.rows, "enq", seed=5)
        enqueue = lambda _: arms_mod.enqueue(app, requests, budget, plan.chunk)  # noqa: E731
        arms.append(Arm("-", "enqueue", enqueue))
    rows = arms_mod.result_rows(plan.rows, "sink", stack.records[first.name])
    if plan.wants("sink"):
        arms.append(Arm("-", "sink", lambda _: arms_mod.sink(engine, rows, budget)))
    if plan.wants("orm_per_row"):
        arms.append(Arm("-", "orm_per_row", lambda _: arms_mod.orm_per_row(engine, rows, budget)))
    for model in models:
        if plan.wants("inprocess"):
            arms.extend(_inprocess_arms(plan, stack, model))
        arms.extend(_product_arms(plan, stack, model, results))
        if not model.model_bound and plan.wants("per_request"):
            arms.append(Arm(model.name, "per_request", _per_request(plan, stack, model)))
        if not model.model_bound and plan.wants("naive"):
            arms.append(Arm(model.name, "naive", _naive(plan, stack, model)))
    return arms


def _inprocess_arms(plan: Plan, stack: Stack, model: BenchModel) -> list[Arm]:
    """The runtime alone with 1 torch thread and with one per core; the report keeps the
    better as the ceiling (a small model loses to thread hand-offs, a transformer gains)."""
    loaded: list[LoadedModel] = []  # loaded on first use, once
    inputs = [inputs for _, inputs, _ in model.rows(min(plan.rows, 4096), 6)]

    def at(threads: int) -> Callable[[int], arms_mod.Rep]:
        def one(_: int) -> arms_mod.Rep:
            if not loaded:
                loaded.append(load_model(stack.records[model.name]))
            torch.set_num_threads(threads)
            return arms_mod.inprocess(loaded[0], inputs, plan.budget())

        return one

    counts = sorted({1, os.cpu_count() or 1})
    return [Arm(model.name, f"inprocess@{t}", at(t), clears=False) for t in counts]


def _product_arms(plan: Plan, stack: Stack, model: BenchModel, results: Results) -> list[Arm]:
    """Bulk files sized for at least --seconds of work at the rate of the faster arm before
    (the runtime alone, then the 2-worker product), at most --rows rows."""
    record = stack.records[model.name]
    files: dict[int, Path] = {}

    def data(rows: int) -> Path:
        if rows not in files:
            files[rows] = model.write_csv(stack.work / f"{model.name}-{rows}.csv", rows, seed=1)
        return files[rows]

    def arm(name: str, queue: str, faster: Callable[[], float | None]) -> Arm:
        app = stack.app(queue)

        def one(_: int) -> arms_mod.Rep:
            path = data(plan.rows_for(faster()))
            return arms_mod.bulk(app, stack.engine, path, record, plan.chunk, plan.stall_s)

        return Arm(model.name, name, one)

    def ceiling() -> float | None:
        return max(_inprocess_rates(results, model.name).values(), default=None)

    out = []
    if plan.wants("product"):
        out.append(arm("product", stack.queues.all, ceiling))
    if plan.wants("product_1x1"):
        two = lambda: _median(results, model.name, "product") or ceiling()  # noqa: E731
        out.append(arm("product_1x1", stack.queues.one, two))
    return out


def _inprocess_rates(results: Results, group: str) -> dict[int, float]:
    return {
        int(name.split("@")[1]): statistics.median(r.rows_per_s for r in runs)
        for (g, name), runs in results.items()
        if g == group and name.startswith("inprocess@")
    }


def _per_request(plan: Plan, stack: Stack, model: BenchModel) -> Callable[[int], arms_mod.Rep]:
    send = arms_mod.per_request_sender(stack.app(stack.queues.all))

    def one(rep: int) -> arms_mod.Rep:
        requests = model.requests(plan.rows, f"pr{rep}", seed=2)
        return arms_mod.paced(
            send, requests, lambda: count_rows(stack.engine), plan.budget(), window=2000
        )

    return one


def _naive(plan: Plan, stack: Stack, model: BenchModel) -> Callable[[int], arms_mod.Rep]:
    from bench.naive_app import TASK
    from bench.naive_app import create_app as naive_app

    send = arms_mod.naive_sender(naive_app(stack.settings, stack.queues.naive), TASK)

    def one(rep: int) -> arms_mod.Rep:
        requests = model.requests(plan.rows, f"nv{rep}", seed=2)
        return arms_mod.paced(
            send, requests, lambda: count_rows(stack.engine), plan.budget(), window=1000
        )

    return one


@contextmanager
def _workers(plan: Plan, stack: Stack, models: list[BenchModel]) -> Iterator[None]:
    """The product's workers and the naive worker, idle (blocked on Redis) between arms.

    Worker 0 consumes `one` and `all`, worker 1 only `all`: one set of processes serves
    both the 1-worker and the 2-worker arms. The naive worker (Celery defaults: prefork,
    one child per core) loads its model in each child on a few warm-up requests.
    """
    q = stack.queues
    started: list[WorkerProcs] = []
    try:
        if {"product", "product_1x1", "per_request"} & plan.arms:
            started.append(
                scoring_worker(stack.worker_env(), [[q.one, q.all], [q.all]], stack.work / "logs")
            )
        demo = next((m for m in models if not m.model_bound), None)
        if demo is not None and plan.wants("naive"):
            started.append(
                start_processes(
                    [[sys.executable, "-m", "bench.naive_app", q.naive]],
                    [stack.worker_env()],
                    stack.work / "logs",
                    " ready.",
                )
            )
            _warm_naive(plan, stack, demo)
        yield
    finally:
        for procs in started:
            procs.stop()


def _warm_naive(plan: Plan, stack: Stack, model: BenchModel) -> None:
    from bench.naive_app import TASK
    from bench.naive_app import create_app as naive_app

    clear_results(stack.engine)
    send = arms_mod.naive_sender(naive_app(stack.settings, stack.queues.naive), TASK)
    warm = model.requests(20, "warm", seed=3)
    send(warm)  # each child loads its model on first use
    wait_until(lambda: count_rows(stack.engine), len(warm), plan.stall_s)
    clear_results(stack.engine)


def _report_arms(results: Results) -> dict[str, Any]:
    """{arm: figures} for model-independent arms, {model: {arm: figures}} for the rest;
    the in-process arm is the better of its thread counts, both kept."""
    arms: dict[str, Any] = {}
    for (group, name), runs in results.items():
        if group == "-":
            arms[name] = summarise(runs)
            continue
        section = arms.setdefault(group, {})
        if name.startswith("inprocess@"):
            by_threads = section.setdefault("_by_threads", {})
            by_threads[int(name.split("@")[1])] = summarise(runs)
        else:
            section[name] = summarise(runs)
    for section in arms.values():
        by_threads = section.pop("_by_threads", None) if isinstance(section, dict) else None
        if by_threads:
            best = max(by_threads, key=lambda t: by_threads[t]["rows_per_s"])
            inprocess = {**by_threads[best], "torch_threads": best, "by_threads": by_threads}
            rest = dict(section)
            section.clear()
            section.update({"inprocess": inprocess, **rest})
    return arms


def _batch_sizes(records: dict[str, ModelVersion]) -> dict[str, int]:
    return {name: r.max_batch_size for name, r in records.items()}


def _machine(
    engine: Engine, load_at_start: tuple[float, float, float], meter: CpuMeter
) -> dict[str, Any]:
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
        "cpu_share_used_elsewhere": meter.other_share(),
        "cpus": os.cpu_count(),
        "cpu_model": model_name,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "postgresql": pg,
        "platform": platform.platform(),
    }
