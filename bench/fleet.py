"""Worker processes a fault benchmark starts, SIGKILLs and restarts, and the Redis counts
it reads at the end: shared by `scoring bench chaos` and `scoring bench soak`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import names

WORKER = ["-m", "workers.process"]  # what `scoring worker` starts in each child


@dataclass
class Procs:
    """Named worker processes, each restartable under its name (heartbeat `name@host`)."""

    env: dict[str, str]
    logs: Path
    beats: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)  # default: WORKER
    envs: dict[str, dict[str, str]] = field(default_factory=dict)  # per name, over `env`

    def start(self, name: str) -> None:
        for old in self.beats.glob(f"{name}@*.json"):  # the process names itself name@host
            old.unlink(missing_ok=True)
        self.starts[name] = self.starts.get(name, 0) + 1
        with (self.logs / f"{name}-{self.starts[name]}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, *self.commands.get(name, WORKER)],
                env={**self.env, **self.envs.get(name, {}), "SCORING_WORKER_NAME": name},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def heartbeat(self, name: str) -> dict[str, Any] | None:
        for path in self.beats.glob(f"{name}@*.json"):
            try:
                return dict(json.loads(path.read_text()))
            except (OSError, ValueError):
                return None
        return None

    def consuming(self, name: str) -> bool:
        """It stored a batch since it (re)started."""
        beat = self.heartbeat(name)
        return bool(beat and beat.get("batches", 0) > 0)

    def stop_all(self) -> None:
        stop_processes(self.procs.values())


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """SIGTERM every process still running, then wait for each; kill one that hangs."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def settle(procs: Procs, pending: dict[str, dict[str, float]], wait_s: float = 0) -> None:
    """A restarted worker has recovered once it finished a batch: note how long it took
    (`recovered_s`, from the kill's `wall` time to that batch's heartbeat)."""
    deadline = time.monotonic() + wait_s
    while True:
        for name in list(pending):
            beat = procs.heartbeat(name)
            if beat and beat.get("batches", 0) > 0:
                kill = pending.pop(name)
                kill["recovered_s"] = round(float(beat["at"]) - kill.pop("wall"), 2)
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(0.2)


def wait(predicate: Callable[[], bool], timeout: float, what: str, run: str = "chaos") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{run} run: {what}: not within {timeout:.0f}s")
        time.sleep(0.2)


def redis_client(broker_url: str) -> Any:
    import redis

    return redis.Redis.from_url(broker_url)


def llen(broker_url: str, queue: str) -> int:
    return int(redis_client(broker_url).llen(queue))


def busy(broker_url: str, queue: str) -> int:
    """Messages of `queue` still queued or recorded as unacknowledged."""
    client = redis_client(broker_url)
    queued = sum(int(client.llen(k)) for k in names.queue_lists(queue))
    held = sum(queue.encode() in raw for raw in client.hvals("unacked"))
    return queued + held


def drop_queues(broker_url: str, queue: str, dlq: str) -> None:
    client = redis_client(broker_url)
    keys = [*names.queue_lists(queue), dlq]
    client.delete(*keys, f"{names.DOORBELL_PREFIX}{queue}", f"_kombu.binding.{queue}")
