"""What the local services share: where their state lives, credentials, waiting, stopping."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / ".services"
HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service that cannot be started or reached; the message says what to do."""


def log(message: str) -> None:
    print(f"services: {message}", file=sys.stderr, flush=True)


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def is_root() -> bool:
    return os.geteuid() == 0


def tail(path: Path, lines: int = 30) -> str:
    """The end of a service's log, to explain a failure."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n---- last lines of {path} ----\n" + "\n".join(text)


def pid_of(pidfile: Path, pattern: str) -> int | None:
    """The pid in `pidfile` when that process lives and its command line has `pattern`
    (guards against a recycled pid)."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    return pid if pattern in cmdline else None


def stop_pid(pid: int, name: str, wait_s: float, sig: int = signal.SIGTERM) -> None:
    """Signal, wait, then SIGKILL as a last resort."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if not wait_until(lambda: not _alive(pid), wait_s, 0.1):
        log(f"{name} (pid {pid}) did not stop within {wait_s:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 10, 0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, IndexError):
        return False
    return state != "Z"


def credentials(state: Path = STATE) -> dict[str, str]:
    """Passwords of the local services, made once per checkout and kept in its state
    folder (mode 600): nothing listens without authentication, and no password is in git."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / "credentials.json"
    known: dict[str, str] = {}
    if path.exists():
        known = json.loads(path.read_text())
    wanted = ("redis_scoring", "redis_flower", "postgres_scoring", "kafka_scoring", "kafka_broker")
    if any(k not in known for k in wanted):
        for key in wanted:
            known.setdefault(key, secrets.token_urlsafe(18))
        path.write_text(json.dumps(known, indent=2))
        path.chmod(0o600)
    return known


@contextlib.contextmanager
def locked(state: Path = STATE) -> Iterator[None]:
    """One up/down at a time (two test runs starting together)."""
    state.mkdir(parents=True, exist_ok=True)
    with (state / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, check=False, **kwargs)  # type: ignore[call-overload]
