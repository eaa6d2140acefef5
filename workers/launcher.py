"""Start worker processes: one per GPU (pinned before torch loads), or N CPU workers.

Each worker is a separate process started fresh (never forked from a parent that touched
CUDA), running one Celery worker with the solo pool (workers/process.py): its model lives in
that process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import Any


class LaunchError(RuntimeError):
    """A worker layout that cannot run here, with what to do instead."""


def visible_gpus() -> list[str]:
    """GPU indices the NVIDIA driver reports, without initialising CUDA in this process."""
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(  # nosec B607: found on PATH by shutil.which above
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def plan_workers(
    cpu: int | None, gpus: str | None, cores: int | None = None
) -> list[dict[str, str]]:
    """The environment of each worker process to start: name, GPU pinning, torch threads.

    Without --cpu or --gpus: one process pinned to each GPU the driver reports, or one CPU
    process where there is none.
    """
    if not gpus and cpu is None:
        gpus = ",".join(visible_gpus())
    if gpus:
        wanted = [g.strip() for g in gpus.split(",") if g.strip()]
        present = visible_gpus()
        missing = [g for g in wanted if g not in present]
        if missing:
            found = ", ".join(present) or "none"
            raise LaunchError(
                f"GPU(s) {', '.join(missing)} not found (GPUs here: {found}); "
                "use --cpu N on a machine without GPUs"
            )
        return [{"SCORING_WORKER_NAME": f"gpu{g}", "CUDA_VISIBLE_DEVICES": g} for g in wanted]
    n = cpu or 1
    cores = cores or os.cpu_count() or 1
    threads = max(1, cores // n)
    return [
        {
            "SCORING_WORKER_NAME": f"cpu{i}",
            "CUDA_VISIBLE_DEVICES": "",
            "SCORING_TORCH_THREADS": os.environ.get("SCORING_TORCH_THREADS", str(threads)),
        }
        for i in range(n)
    ]


def with_metrics_ports(plans: list[dict[str, str]], port: int | None) -> list[dict[str, str]]:
    """Each process its own SCORING_METRICS_PORT on this host: `port` + its index (unset:
    none serves metrics)."""
    if port is None:
        return plans
    last = port + len(plans) - 1
    if last > 65535:
        raise LaunchError(
            f"SCORING_METRICS_PORT={port} with {len(plans)} processes needs ports up to "
            f"{last}; choose a port at most {65536 - len(plans)}"
        )
    return [{**plan, "SCORING_METRICS_PORT": str(port + i)} for i, plan in enumerate(plans)]


def run_many(plans: list[dict[str, str]], argv: list[str]) -> int:
    """Start one child process per plan (`python -m workers.process ARGV`, the CLI is not
    imported there) and supervise them; returns the worst exit code."""
    with _children(plans, argv) as children:
        codes = [child.wait() for child in children]
    return max(codes, default=0)


@contextmanager
def _children(plans: list[dict[str, str]], argv: list[str]) -> Any:
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "workers.process", *argv], env={**os.environ, **plan}
        )
        for plan in plans
    ]

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield children
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
