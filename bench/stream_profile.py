"""`scoring bench stream --profile`: where the stream worker's CPU goes at its sustained rate.

py-spy samples the worker process (no code change in it) while a rate window runs; each
sample is charged to the innermost frame that belongs to a known area, so the summary says
how much is kafka-python itself and how much is scoring, validation and the database.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.stream_load import Arm, Payload, make_load, rate_window

AREAS = (
    ("kafka-python", ("kafka/",)),
    ("database", ("psycopg", "sqlalchemy/", "workers/sink.py")),
    ("model", ("torch/", "workers/models/", "workers/runtime.py")),
    ("parse+validate", ("json/", "pydantic", "schemas/wire.py")),
    ("stream worker", ("workers/kafka_",)),
    ("scorer+pipeline", ("workers/pipeline.py", "workers/service.py", "workers/batcher.py")),
)
SECONDS = 15
# Leaf frames that mean a thread is waiting (IO, locks), not using the CPU.
WAITING = ("selectors.py", "threading.py", "Connection.wait (psycopg", "queue.py")


def profile_stream(
    client: dict[str, Any], payload: Payload, arm: Arm, rate: float, save_to: Path | None
) -> dict[str, Any]:
    """Sample the stream worker for SECONDS while `rate` events/s are offered."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    raw = save_to or Path(tempfile.mkstemp(suffix=".pyspy.txt")[1])
    sampler = subprocess.Popen(
        [pyspy, "record", "-p", str(arm.pid), "-d", str(SECONDS), "-r", "100"]
        + ["-f", "raw", "--nonblocking", "-o", str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    load = make_load(client, payload)
    try:
        window, _ = rate_window(load, arm, "profile", rate, SECONDS)
    finally:
        load.close()
    sampler.wait(120)
    summary = summarize(raw.read_text()) if raw.exists() else {"skipped": "py-spy wrote nothing"}
    return {"rate": round(rate, 1), "window": window, "raw_samples": str(raw), **summary}


def summarize(raw: str) -> dict[str, Any]:
    """Share of busy samples per area, the share spent waiting, and the hottest functions."""
    areas: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        if any(w in frames[-1] for w in WAITING):
            waiting += n
            continue
        leaves[frames[-1]] += n
        areas[_area(frames)] += n
    busy = total - waiting
    if not busy:
        return {"samples": total}
    return {
        "samples": total,
        "waiting_pct": round(100 * waiting / total, 1),
        "busy_share_pct": {k: round(100 * v / busy, 1) for k, v in areas.most_common()},
        "top_self_pct_of_busy": [
            {"frame": frame[:120], "pct": round(100 * v / busy, 1)}
            for frame, v in leaves.most_common(12)
        ],
    }


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for area, markers in AREAS:
            if any(m in frame for m in markers):
                return area
    return "other"
