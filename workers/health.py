"""Is this container's worker consuming? The images' HEALTHCHECK and Kubernetes probes.

`python -m workers.health [--max-age S] [--ready]` reads the heartbeat files the worker
processes write (SCORING_HEARTBEAT_DIR). Ready: every process has written one (its models
are warm). Live: every heartbeat is younger than --max-age, or, for one that is older, its
queue is empty (an idle worker has nothing to prove). A live process that stopped
consuming while messages wait (celery#10302) fails. Exit 0 healthy, 1 not (a probe that
cannot check, say SCORING_HEARTBEAT_DIR unset, is unhealthy too, and says why).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from schemas import names
from schemas.settings import Settings


def heartbeats(directory: Path) -> dict[str, float]:
    """Worker name -> seconds since its last batch (or start)."""
    now, out = time.time(), {}
    for path in sorted(directory.glob("*.json")):
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        out[str(body.get("worker", path.stem))] = now - float(body.get("at", 0))
    return out


def queue_depth(settings: Settings) -> int:
    """Messages waiting on the requests queue (every priority step)."""
    client = settings.broker.redis_client(socket_timeout=5)
    queue = settings.broker.requests_queue
    return int(sum(client.llen(k) for k in names.queue_lists(queue)))


def check(settings: Settings, max_age_s: float, ready_only: bool) -> tuple[bool, str]:
    directory = settings.runtime.heartbeat_dir
    if directory is None:
        return False, "SCORING_HEARTBEAT_DIR is not set: the worker writes no heartbeat"
    beats = heartbeats(directory)
    if not beats:
        return False, f"no heartbeat in {directory} yet: the worker is still starting"
    if ready_only:
        return True, f"ready: {', '.join(sorted(beats))}"
    stale = {name: age for name, age in beats.items() if age > max_age_s}
    if not stale:
        return True, f"{len(beats)} worker(s) scored within {max_age_s:.0f}s"
    waiting = queue_depth(settings)
    if waiting == 0:
        return True, f"idle: no batch for {max(stale.values()):.0f}s and nothing queued"
    worst = max(stale, key=lambda n: stale[n])
    return False, (
        f"{worst} scored nothing for {stale[worst]:.0f}s while {waiting} messages wait on "
        f"{settings.broker.requests_queue}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.health")
    parser.add_argument("--max-age", type=float, default=120.0, help="seconds")
    parser.add_argument("--ready", action="store_true", help="only: models warm, serving")
    args = parser.parse_args(argv)
    try:
        healthy, why = check(Settings.from_env(), args.max_age, args.ready)
    except Exception as exc:  # noqa: BLE001 - a probe reports, it never crashes
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(("healthy: " if healthy else "unhealthy: ") + why)
    return names.EXIT_OK if healthy else names.EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
