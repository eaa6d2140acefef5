"""A TCP relay in a replica's link to its primary, to make replication lag on purpose.

On one machine a replica is microseconds behind its primary, so a SIGKILLed primary
almost never takes acknowledged writes with it, and a test of what asynchronous
replication loses would test nothing. `hold()` stops passing the primary's replication
stream on (the bytes are counted and dropped): from then on every write the primary
acknowledges is one the replica will never have, which is what a lagging replica loses
when its primary dies.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.helpers import free_port

HOST = "127.0.0.1"


class ReplicationRelay:
    """Listens on `port`; each connection is relayed to `upstream_port` on loopback."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.withheld_bytes = 0
        self._held = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server((HOST, self.port))
        self._threads = [threading.Thread(target=self._accept, name="relay-accept", daemon=True)]
        self._threads[0].start()

    def hold(self) -> None:
        """Stop forwarding the primary's stream: the replica falls behind from now on."""
        self._held.set()

    def close(self) -> None:
        """Drop every connection and stop listening (what was held is lost)."""
        self._closed.set()
        with self._lock:
            sockets, self._sockets = [self._listener, *self._sockets], []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.upstream_port), timeout=2)
            except OSError:
                downstream.close()  # the primary is gone: the replica retries
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._closed.is_set():
                    downstream.close()
                    upstream.close()
                    return
                self._sockets += [downstream, upstream]
            for source, target, held in (
                (upstream, downstream, True),
                (downstream, upstream, False),
            ):
                thread = threading.Thread(
                    target=self._pump, args=(source, target, held), name="relay-pump", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, target: socket.socket, holdable: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if holdable and self._held.is_set():
                self.withheld_bytes += len(data)
                continue
            try:
                target.sendall(data)
            except OSError:
                break
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
