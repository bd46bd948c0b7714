"""TCP forwarding between the host's network and the cluster's network namespace.

A socket belongs to the network namespace of the thread that created it, for its whole
life. So a listener made on the host keeps accepting host connections even when the
process that uses it lives in the cluster's namespace (the launcher forwards the apiserver
that way), and a thread that entered the cluster's namespace with ``setns`` can dial pods,
Services and the node from a host process (:class:`Forwarder` with ``netns``).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from localcluster import linux

T = TypeVar("T")

_CHUNK = 256 * 1024


def in_netns(netns: Path, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a short-lived thread inside the network namespace ``netns``; sockets it
    creates stay in that namespace after it returns."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            linux.setns(netns, linux.CLONE_NEWNET)
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name="in-netns", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both sides finished sending; half-closes are passed on."""
    sel = selectors.DefaultSelector()
    peers = {a: b, b: a}
    for sock in peers:
        sel.register(sock, selectors.EVENT_READ)
    open_reads = 2
    try:
        while open_reads:
            for key, _ in sel.select():
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                dst = peers[src]
                try:
                    data = src.recv(_CHUNK)
                except OSError:
                    return
                if not data:
                    sel.unregister(src)
                    open_reads -= 1
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    continue
                try:
                    dst.sendall(data)
                except OSError:
                    return
    finally:
        sel.close()
        a.close()
        b.close()


class Forwarder:
    """Accepts on ``listener`` and connects each client to ``target`` (host, port).

    ``netns``: dial from inside that network namespace (each connection's thread enters it
    first); None dials from the caller's own namespace. Threads are daemons: a process that
    exits takes its forwards with it.
    """

    def __init__(
        self,
        listener: socket.socket,
        target: tuple[str, int],
        netns: Path | None = None,
    ) -> None:
        self.listener = listener
        self.target = target
        self.netns = netns
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="forwarder", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting; connections already forwarded run until either side closes."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(
                target=self._connect, args=(client,), name="forward", daemon=True
            ).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            if self.netns is not None:
                linux.setns(self.netns, linux.CLONE_NEWNET)
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()  # the client sees a reset, as with a closed port
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _pump(client, upstream)


def listen_loopback(port: int = 0) -> socket.socket:
    """A listening socket on the calling thread's 127.0.0.1 (a free port unless given)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock
