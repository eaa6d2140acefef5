"""The real services an end-to-end bench run stands on: its own PostgreSQL database, its own
Redis queues, and worker processes started the way `scoring worker` starts them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kombu import Connection
from sqlalchemy import Engine, text

from schemas import db

READY_TIMEOUT_S = 120.0


class BenchError(RuntimeError):
    """A bench run that could not be carried out, with what to check."""


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one bench run, dropped afterwards."""
    if not server_url.startswith("postgresql"):
        raise BenchError(f"the e2e bench needs PostgreSQL, got {server_url!r}")
    with db.scratch_database(server_url, "scoring_bench") as url:
        yield url


def clear_results(engine: Engine) -> None:
    """Empty what arms write, so every repetition starts from the same table sizes."""
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE score_results, batch_metrics, bulk_duplicates"))


def count_rows(engine: Engine, where: str = "") -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM score_results {where}")).scalar_one())  # nosec B608


def delete_queues(broker_url: str, *queues: str) -> None:
    """Drop the bench's queues (every priority sub-queue) and their bindings from Redis.

    kombu's queue_delete only knows bindings declared by the same channel, so this uses
    the transport's own key layout: Celery binds each queue to a direct exchange of its
    name, and dead letters go through the default exchange.
    """
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        for queue in queues:
            for exchange in (queue, ""):
                channel._delete(queue, exchange, queue, "")


def queue_length(broker_url: str, queue: str) -> int:
    with Connection(broker_url) as conn:
        return int(conn.default_channel._size(queue))  # every priority level


@dataclass
class WorkerProcs:
    """Worker processes started with their own log files; `stop` ends only these."""

    logs: list[Path]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self, timeout: float = 60.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def tail(self, lines: int = 30) -> str:
        out = []
        for log in self.logs:
            text_lines = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text_lines))
        return "\n".join(out)


def start_processes(
    commands: list[list[str]], envs: list[dict[str, str]], logdir: Path, ready_marker: str
) -> WorkerProcs:
    """Start each command with its environment; wait until every log shows `ready_marker`."""
    logdir.mkdir(parents=True, exist_ok=True)
    procs = WorkerProcs(logs=[logdir / f"proc-{uuid.uuid4().hex[:6]}.log" for _ in commands])
    for command, env, log in zip(commands, envs, procs.logs, strict=True):
        with log.open("wb") as fh:
            procs.procs.append(
                subprocess.Popen(command, env={**os.environ, **env}, stdout=fh, stderr=fh)
            )
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while not all(ready_marker in log.read_text(errors="replace") for log in procs.logs):
            dead = [p for p in procs.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise BenchError(f"worker did not become ready:\n{procs.tail()}")
            time.sleep(0.1)
    except BaseException:
        procs.stop()
        raise
    return procs


def scoring_worker(
    env: dict[str, str], queues: list[list[str]], logdir: Path, threads: int = 1
) -> WorkerProcs:
    """One real `scoring worker` process per queue list, each with `threads` torch threads.

    Started as `python -m workers.process`, which is what `scoring worker --cpu N` runs in
    each child; started directly so that each process can consume its own set of queues.
    """
    commands = [
        [sys.executable, "-m", "workers.process", f"--queues={','.join(q)}"] for q in queues
    ]
    envs = [
        {
            **env,
            "SCORING_WORKER_NAME": f"bench{i}-{uuid.uuid4().hex[:4]}",
            "SCORING_TORCH_THREADS": str(threads),
            "CUDA_VISIBLE_DEVICES": "",
        }
        for i in range(len(queues))
    ]
    return start_processes(commands, envs, logdir, "warmed up")


def wait_until(
    count: Callable[[], int], target: int, stall_s: float, poll_s: float = 0.05
) -> tuple[int, float]:
    """Poll `count` until it reaches `target` or stops moving for `stall_s` seconds.

    Counting a large results table costs the database real CPU, which the arm being timed
    needs: the poll waits an eighth of the expected time left (between `poll_s` and 0.5 s,
    the poll of `scoring bulk --wait`), so it is rare while far from the target and every
    `poll_s` near it.
    Returns (last count, monotonic time it was first seen at that value).
    """
    started = time.monotonic()
    first = last = count()
    seen_at = time.monotonic()
    while last < target:
        rate = (last - first) / max(time.monotonic() - started, 1e-3)
        eta = (target - last) / rate if rate > 0 else poll_s
        time.sleep(min(max(eta / 8, poll_s), 0.5))
        now_count = count()
        if now_count != last:
            last, seen_at = now_count, time.monotonic()
        elif time.monotonic() - seen_at > stall_s:
            break
    return last, seen_at


def _service_cpu_s() -> float:
    """CPU seconds used so far by PostgreSQL and Redis processes (they serve the bench)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :]
        if comm.startswith(("postgres", "redis-server")):
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """How much of the machine other work took while the bench ran: everything busy minus
    this process, the workers it started (waited for) and PostgreSQL/Redis. Linux only."""

    started: float = field(default_factory=time.monotonic)
    busy: float = field(default_factory=_busy_cpu_s)
    services: float = field(default_factory=_service_cpu_s)
    own: float = field(default_factory=lambda: _own_cpu_s())

    def other_share(self) -> float:
        """Share of all cores used by other processes since the meter started (0..1)."""
        elapsed = (time.monotonic() - self.started) * (os.cpu_count() or 1)
        other = (
            (_busy_cpu_s() - self.busy)
            - (_service_cpu_s() - self.services)
            - (_own_cpu_s() - self.own)
        )
        return round(max(0.0, other) / max(elapsed, 1e-9), 3)


def _own_cpu_s() -> float:
    import resource

    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)
