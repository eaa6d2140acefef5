"""`scoring bench soak`: minutes of steady Kafka and Redis load on a fleet of worker
processes, one of them SIGKILLed (and restarted at once) every --kill-every-s and the Redis
restarted once, then per source: events in, results out, lost, doubled, dead letters,
latency, and how long each recovery took.

The Redis is a private one (AOF on) in a temporary directory, so its restart touches no
one else; PostgreSQL (a scratch database) and Kafka (topics and a group of the run's own)
are the configured ones. The fleet is two Celery workers on the Redis queue and two
`scoring stream` consumers of one group, each a process of its own, so a kill lands on
one source's worker and its recovery is that source's. A kill picks, at random, one of
the workers that stored a batch since it started: it always hits a consuming process.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from bench.fleet import Procs, busy, llen, settle, wait
from bench.soak_load import Paced, demo_inputs, kafka_send, redis_send
from bench.soak_report import (
    SOURCES,
    counts,
    failed,
    kills,
    print_table,
    restart,
    topic_records,
    with_machine,
)

STREAM = ["-m", "scoring.cli", "stream"]
RECOVERY_GRACE_S = 180.0


@dataclass(frozen=True)
class SoakPlan:
    duration_s: float = 600.0
    kill_every_s: float = 60.0
    redis_restart_at_s: float | None = None  # None: half-way
    rate: float = 150.0  # requests per second, per source
    redis_workers: int = 2
    kafka_workers: int = 2
    per_message: int = 10  # requests per Redis task message
    visibility_s: int = 5
    drain_timeout_s: float = 300.0
    seed: int = 0

    @property
    def restart_at_s(self) -> float:
        at = self.redis_restart_at_s
        return self.duration_s / 2 if at is None else at


@dataclass
class Run:
    """What happened while the load ran: the kills, the restart, exits nobody asked for."""

    kills: list[dict[str, Any]] = field(default_factory=list)
    restart: dict[str, Any] = field(default_factory=dict)
    unexpected_exits: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Topics:
    requests: str
    results: str
    dlq: str
    group: str


def run_soak(
    plan: SoakPlan,
    server_db_url: str,
    kafka: Any,
    workdir: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One soak on a scratch database, a private Redis and Kafka topics of its own."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from deploy.services.redis_server import RedisServer
    from schemas.db import make_engine, scratch_database

    tag = uuid.uuid4().hex[:8]
    topics = Topics(f"soak-{tag}", f"soak-{tag}-results", f"soak-{tag}-dlq", f"soak-{tag}")
    redis = RedisServer(
        port=_free_port(),
        directory=workdir / "redis",
        users={"scoring": secrets.token_urlsafe(18)},
    )
    admin = KafkaAdminClient(**kafka.client_config(), client_id="scoring-bench-soak")
    try:
        admin.create_topics(
            [NewTopic(topics.requests, 4, 1), NewTopic(topics.results, 4, 1)]
            + [NewTopic(topics.dlq, 1, 1)]
        )
        redis.start()
        with scratch_database(server_db_url, "bench_soak") as url:
            engine = make_engine(url)
            try:
                return _run(plan, url, redis, kafka, topics, workdir, engine, log)
            finally:
                engine.dispose()
    finally:
        redis.kill()
        admin.delete_topics([topics.requests, topics.results, topics.dlq], raise_errors=False)
        admin.close()


def _env(
    url: str, broker_url: str, kafka: Any, topics: Topics, plan: SoakPlan, workdir: Path
) -> dict[str, str]:
    """The fleet's environment: the run's database, Redis, queues, topics and group."""
    connection = {
        "SCORING_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "SCORING_KAFKA_SECURITY_PROTOCOL": kafka.security_protocol,
        "SCORING_KAFKA_SASL_MECHANISM": kafka.sasl_mechanism,
        "SCORING_KAFKA_USERNAME": kafka.username or "",
        "SCORING_KAFKA_PASSWORD": kafka.password.get_secret_value() if kafka.password else "",
        "SCORING_KAFKA_SSL_CAFILE": str(kafka.ssl_cafile) if kafka.ssl_cafile else "",
    }
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCORING_")},
        **{k: v for k, v in connection.items() if v},
        "SCORING_DATABASE_URL": url,
        "SCORING_BROKER_URL": broker_url,
        "SCORING_MODEL_STORE": str(workdir / "store"),
        "SCORING_REQUESTS_QUEUE": f"soak-{topics.group}",
        "SCORING_DEAD_LETTER_QUEUE": f"soak-{topics.group}.dlq",
        "SCORING_VISIBILITY_TIMEOUT_S": str(plan.visibility_s),
        "SCORING_KAFKA_TOPIC": topics.requests,
        "SCORING_KAFKA_RESULTS_TOPIC": topics.results,
        "SCORING_KAFKA_DLQ_TOPIC": topics.dlq,
        "SCORING_KAFKA_FEEDBACK_TOPIC": "",  # none: never the shared default topic
        "SCORING_KAFKA_GROUP": topics.group,
        "SCORING_KAFKA_SESSION_TIMEOUT_MS": "6000",  # a dead member's partitions move in 6 s
        "SCORING_TORCH_THREADS": "1",
        "SCORING_HEARTBEAT_DIR": str(workdir / "beats"),
        "SCORING_DB_RETRY_BACKOFF_S": "0.05",
        "CUDA_VISIBLE_DEVICES": "",
    }


def _run(
    plan: SoakPlan,
    url: str,
    redis: Any,
    kafka: Any,
    topics: Topics,
    workdir: Path,
    engine: Any,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from workers.runtime import registry
    from workers.runtime.models.demo.build import build_artifact

    registry.register(engine, workdir / "store", "demo", build_artifact(workdir / "artifact"))
    (workdir / "beats").mkdir()
    env = _env(url, redis.url(), kafka, topics, plan, workdir)
    queue, dlq = env["SCORING_REQUESTS_QUEUE"], env["SCORING_DEAD_LETTER_QUEUE"]
    fleet = {f"redis{i}": "redis" for i in range(plan.redis_workers)}
    fleet |= {f"kafka{i}": "kafka" for i in range(plan.kafka_workers)}
    procs = Procs(
        env, workdir, workdir / "beats", commands={n: STREAM for n in fleet if n[0] == "k"}
    )
    run = Run()
    producers: list[Paced] = []
    closers: list[Callable[[], None]] = []
    try:
        for name in fleet:
            procs.start(name)
        wait(lambda: _warm(procs, fleet), 300, "workers warm", "soak")
        inputs = demo_inputs()
        for source, (send, close) in (
            ("redis", redis_send(redis.url(), queue, plan.per_message)),
            ("kafka", kafka_send(kafka, topics.requests)),
        ):
            closers.append(close)
            producers.append(Paced(f"soak-{source}", plan.rate, send, inputs))
        for producer in producers:
            producer.start()
        log(f"soak: {len(fleet)} workers warm, {plan.rate:g}/s per source for {plan.duration_s:g}s")
        started = time.monotonic()
        _load(plan, procs, fleet, redis, run, started, log)
        for producer in producers:
            producer.stop()
        producing_s = time.monotonic() - started
        acked = {s: p.acked for s, p in zip(SOURCES, producers, strict=True)}
        drained = _drain(engine, acked, plan.drain_timeout_s)
        drain_s = time.monotonic() - started - producing_s
        _quiet(lambda: busy(redis.url(), queue) == 0, 60)
        settle(procs, run.pending, wait_s=60)
        elapsed = time.monotonic() - started
        left = busy(redis.url(), queue)
        redis_dlq = llen(redis.url(), dlq)
    finally:
        for producer in producers:
            if producer.is_alive():
                producer.stop()
        for close in closers:
            close()
        procs.stop_all()
    report = {
        "benchmark": "soak",
        "plan": asdict(plan),
        "sources": {
            s: {
                **counts(engine, f"soak-{s}", acked[s]),
                "dead_letters": redis_dlq if s == "redis" else topic_records(kafka, topics.dlq),
                "failed_sends": p.failed_sends,
                "longest_unconfirmed_send_s": p.longest_unconfirmed_s,
            }
            for s, p in zip(SOURCES, producers, strict=True)
        },
        "kills": kills(run.kills),
        "redis_restart": restart(engine, run.restart),
        "unexpected_exits": run.unexpected_exits,
        "left_queued_or_unacked": left,
        "drained": drained,
        "producing_s": round(producing_s, 1),
        "drain_s": round(drain_s, 1),
        "wall_s": round(elapsed, 1),
    }
    return with_machine(report)


def _warm(procs: Procs, fleet: dict[str, str]) -> bool:
    """Every worker wrote its ready heartbeat; one that exited stops the run."""
    for name, proc in procs.procs.items():
        if proc.poll() is not None:
            tail = (procs.logs / f"{name}-{procs.starts[name]}.log").read_text(errors="replace")
            raise RuntimeError(f"soak: {name} exited {proc.returncode}:\n{tail[-3000:]}")
    return all(procs.heartbeat(n) for n in fleet)


def _load(
    plan: SoakPlan,
    procs: Procs,
    fleet: dict[str, str],
    redis: Any,
    run: Run,
    started: float,
    log: Callable[[str], None],
) -> None:
    """The load's minutes: a kill every kill_every_s, the Redis restart once, and any
    worker that exited on its own started again (and noted). The load goes on past the
    duration (up to RECOVERY_GRACE_S) until the last killed worker stored a batch: a
    restarted worker with nothing to score would never show its recovery."""
    rng = random.Random(plan.seed)  # nosec B311: seeded, for reproducible targets
    next_kill = plan.kill_every_s
    while (elapsed := time.monotonic() - started) < plan.duration_s or (
        run.pending and elapsed < plan.duration_s + RECOVERY_GRACE_S
    ):
        loading = elapsed < plan.duration_s
        for name, proc in list(procs.procs.items()):
            if proc.poll() is not None:
                run.unexpected_exits.append(
                    {"worker": name, "code": proc.returncode, "at": round(elapsed, 1)}
                )
                procs.start(name)
        if loading and elapsed >= next_kill:
            consuming = sorted(n for n in fleet if n not in run.pending and procs.consuming(n))
            if consuming:
                _kill(procs, rng.choice(consuming), fleet, run, elapsed)
                log(f"soak: kill {len(run.kills)}: {run.kills[-1]['worker']} at {elapsed:.0f}s")
                next_kill = max(next_kill + plan.kill_every_s, elapsed + 1)
        if loading and not run.restart and elapsed >= plan.restart_at_s:
            stopped = time.time()
            redis.stop()  # SIGTERM: Redis writes out its append-only file and exits
            redis.start()
            back = time.time()
            run.restart = {
                "at_s": round(elapsed, 1),
                "down_s": round(back - stopped, 2),
                "wall": back,
            }
            log(f"soak: Redis restarted at {elapsed:.0f}s (down {back - stopped:.1f}s)")
        settle(procs, run.pending)
        time.sleep(0.2)


def _kill(procs: Procs, name: str, fleet: dict[str, str], run: Run, elapsed: float) -> None:
    procs.procs[name].send_signal(signal.SIGKILL)
    procs.procs[name].wait(30)
    kill = {"worker": name, "source": fleet[name], "at": round(elapsed, 1), "wall": time.time()}
    run.kills.append(kill)
    procs.start(name)
    run.pending[name] = kill


def _drain(engine: Any, acked: dict[str, int], timeout: float) -> bool:
    """Every confirmed request has a result (or the drain timeout passed: then lost > 0)."""
    return _quiet(
        lambda: all(_distinct(engine, f"soak-{s}", n) >= n for s, n in acked.items()), timeout
    )


def _quiet(predicate: Callable[[], bool], timeout: float) -> bool:
    """`wait` that answers False at the timeout: the counts say what was not done."""
    try:
        wait(predicate, timeout, "", "soak")
    except RuntimeError:
        return False
    return True


def _distinct(engine: Any, prefix: str, acked: int) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(DISTINCT request_id) FROM score_results "
                    "WHERE request_id LIKE :p AND split_part(request_id, '-', 3)::int < :n"
                ),
                {"p": f"{prefix}-%", "n": acked},
            ).scalar_one()
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(
    duration_s: float = typer.Option(600.0, "--duration-s", help="Seconds of load."),
    kill_every_s: float = typer.Option(60.0, "--kill-every-s", help="Seconds between kills."),
    redis_restart_at_s: float = typer.Option(
        None, "--redis-restart-at-s", help="When Redis restarts (default: half-way)."
    ),
    rate: float = typer.Option(150.0, "--rate", help="Requests per second, per source."),
    drain_timeout_s: float = typer.Option(
        300.0, "--drain-timeout-s", help="Seconds the results may take after the load stops."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds which worker each kill picks."),
    out: Path = typer.Option(Path("bench/results/soak.json"), "--out", help="JSON report."),
) -> None:
    """Minutes of Kafka and Redis load with worker SIGKILLs and a Redis restart; counts."""
    from schemas.settings import Settings

    logging.getLogger("kafka").setLevel(logging.WARNING)  # every connection, at INFO
    settings = Settings.from_env()
    server = settings.database.sqlalchemy_url()
    if not server.startswith("postgresql"):
        typer.echo('error: needs PostgreSQL and Kafka: eval "$(make -s services-env)"', err=True)
        raise typer.Exit(2)
    plan = SoakPlan(
        duration_s=duration_s,
        kill_every_s=kill_every_s,
        redis_restart_at_s=redis_restart_at_s,
        rate=rate,
        drain_timeout_s=drain_timeout_s,
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="scoring-soak-") as tmp:
        report = run_soak(plan, server, settings.kafka, Path(tmp), typer.echo)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    if failed(report):
        raise typer.Exit(1)
