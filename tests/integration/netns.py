"""Worker "hosts" in network namespaces, each behind a link a test can cut.

One bridge on this machine's side (`<gateway>/24`), and per host a network namespace
whose veth peer sits on that bridge. `cut(host)` sets the host-side end of its veth down:
packets are dropped, nothing is reset, just as when a cable or a switch port fails; the
host's processes and their sockets live on. The shared services listen on 127.0.0.1 only,
so `Forwarder`s on the gateway address relay to them; and since Kafka advertises
127.0.0.1:<port> in its metadata, a forwarder inside each namespace listens there and
relays to the gateway (across the link). Run as a module inside a namespace it is that
forwarder: `python -m tests.integration.netns LISTEN=TARGET ...` (host:port each).

Every name carries a random tag, and `hosts()` removes all it made (processes,
namespaces, veths, bridge) on the way out, even on failure.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.tcp_proxy import _pump

Address = tuple[str, int]


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (no root, no `ip`, a locked-down kernel)."""


def ip(*args: str) -> None:
    """`ip ARGS`; CalledProcessError (with ip's message) when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)


class Forwarder:
    """Relays every TCP connection to `listen` to `target`; `close()` drops them all."""

    def __init__(self, listen: Address, target: Address) -> None:
        self.target = target
        self._listener = socket.create_server(listen)
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


@dataclass
class Host:
    """One namespace: its name, its address, and the host-side end of its link."""

    netns: str
    address: str
    link: str

    def argv(self, *command: str) -> list[str]:
        """`command` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *command]


@dataclass
class Hosts:
    gateway: str  # this machine's address on the bridge, as the hosts reach it
    bridge: str
    hosts: list[Host]
    tag: str
    forwarders: list[Forwarder] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def expose(self, *ports: int) -> None:
        """The loopback services on these ports, reachable at gateway:port."""
        for port in ports:
            self.forwarders.append(Forwarder((self.gateway, port), ("127.0.0.1", port)))

    def relay_loopback(self, host: Host, ports: list[int], log: Path) -> None:
        """Inside `host`: 127.0.0.1:port relayed to gateway:port (for Kafka's advertised
        address); returns once the relay listens."""
        pairs = [f"127.0.0.1:{p}={self.gateway}:{p}" for p in ports]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                host.argv(sys.executable, "-u", "-m", "tests.integration.netns", *pairs),
                stdout=subprocess.PIPE,
                stderr=out,
            )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"relay in {host.netns} did not start: {log.read_text()}")

    def cut(self, host: Host) -> None:
        ip("link", "set", host.link, "down")

    def restore(self, host: Host) -> None:
        ip("link", "set", host.link, "up")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for forwarder in self.forwarders:
            forwarder.close()


def _free_subnet() -> int:
    """A 10.213.N.0/24 that no route of this machine uses yet."""
    routes = subprocess.run(
        ["ip", "-4", "route", "show"], capture_output=True, text=True, check=False
    ).stdout
    for _ in range(100):
        n = random.randint(1, 254)
        if f"10.213.{n}." not in routes:
            return n
    raise NetnsUnavailable("no free 10.213.N.0/24 subnet")


@contextlib.contextmanager
def hosts(count: int = 2) -> Iterator[Hosts]:
    """`count` hosts on one bridge; everything made here is removed on the way out.
    Raises NetnsUnavailable (before making anything else) if no namespace can be made."""
    tag = uuid.uuid4().hex[:6]
    n = _free_subnet()
    made_netns: list[str] = []
    made_links: list[str] = []
    bridge = f"scbr{tag}"
    try:
        probe = f"scns-{tag}-0"
        try:
            ip("netns", "add", probe)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise NetnsUnavailable(f"`ip netns add` failed: {detail.strip()}") from exc
        made_netns.append(probe)
        ip("link", "add", bridge, "type", "bridge")
        made_links.append(bridge)
        ip("addr", "add", f"10.213.{n}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        members = []
        for i in range(count):
            netns = made_netns[0] if i == 0 else f"scns-{tag}-{i}"
            if i:
                ip("netns", "add", netns)
                made_netns.append(netns)
            outside, inside = f"sch{tag}{i}", f"scn{tag}{i}"
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            made_links.append(outside)
            ip("link", "set", inside, "netns", netns)
            ip("link", "set", outside, "master", bridge)
            ip("link", "set", outside, "up")
            address = f"10.213.{n}.{i + 2}"
            ip("-n", netns, "addr", "add", f"{address}/24", "dev", inside)
            ip("-n", netns, "link", "set", inside, "up")
            ip("-n", netns, "link", "set", "lo", "up")
            members.append(Host(netns=netns, address=address, link=outside))
        made = Hosts(gateway=f"10.213.{n}.1", bridge=bridge, hosts=members, tag=tag)
        try:
            yield made
        finally:
            made.close()
    finally:
        for netns in made_netns:  # (removes the veth ends inside it, and so their peers)
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "delete", netns)
        for link in reversed(made_links):
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("link", "delete", link)  # (already gone with its peer: fine)


def leftovers(tag: str) -> list[str]:
    """Namespaces and links of `tag` still present (a test asserts there are none)."""
    found = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line for line in (found + links).splitlines() if tag in line]


def _address(text: str) -> Address:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: list[str]) -> None:
    """The in-namespace relay: LISTEN=TARGET pairs; says `ready`, runs until SIGTERM."""
    forwarders = []
    for pair in argv:
        listen, target = pair.split("=")
        forwarders.append(Forwarder(_address(listen), _address(target)))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    for forwarder in forwarders:
        forwarder.close()


if __name__ == "__main__":
    main(sys.argv[1:])
