"""A TCP relay between a client and a server that a test can cut, to play a dropped connection."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any


class Proxy:
    """Listens on 127.0.0.1:<free port> and relays each connection to `upstream` (host:port).

    `drop()` closes every connection it relays (both sides), as a network failure would; new
    connections are relayed as before. `refuse` closes that many new connections at once, unrelayed.
    """

    def __init__(self, upstream: str, *, refuse: int = 0) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.accepted = 0
        self.refuse = refuse
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                if self.refuse > 0:
                    self.refuse -= 1
                    client.close()
                    continue
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drop(self, *, reset: bool = False) -> int:
        """Cut every relayed connection; returns how many sockets were closed. `reset`: with a TCP RST
        (SO_LINGER 0), as a network failure shows to a browser, rather than an orderly close."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            if reset:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        return len(sockets)

    def close(self) -> None:
        self._listener.close()
        self.drop()


def resumes_across_a_drop(proxy: Proxy, client_through: Callable[[Proxy], Any], direct: Any) -> None:
    """A reasoning session followed through `proxy`, whose connections are cut after 5 events, gets
    exactly the events a direct client gets: nothing lost, nothing twice."""
    from aibattle_sdk.v1 import ReasoningEventType

    try:
        with client_through(proxy) as client:
            reasoning = client.reasoning.create(
                primary_model="slow", secondary_model="critic", prompt="Count.", max_iterations=1
            )
            events = client.reasoning.events(reasoning.reasoning_id)
            seen = []
            for event in events:
                seen.append(event)
                if len(seen) == 5:
                    assert proxy.drop() > 0
            assert events.reconnects >= 1
        with direct as plain:
            full = list(plain.reasoning.events(reasoning.reasoning_id))
    finally:
        proxy.close()
    assert [e.sequence for e in seen] == list(range(1, len(full) + 1))
    assert seen == full
    assert seen[-1].type == ReasoningEventType.COMPLETION
