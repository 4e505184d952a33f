"""A TCP forwarder on loopback for the tests: every accepted connection is connected to the
aggregator (from ``source``, another loopback address, if given) and bytes are pumped both ways;
with ``record`` it keeps every byte it relays, both directions (what a network observer sees).
A subclass decides what happens to each piece of data in :meth:`Forwarder.passes` (e.g. cut the
connection: tests/test_resume.py)."""

from __future__ import annotations

import socket
import threading


class Forwarder:
    def __init__(self, target_port: int, source: str | None = None, *, record: bool = False) -> None:
        self.target_port = target_port
        self.source = source
        self.record = record
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            source_address = (self.source, 0) if self.source else None
            upstream = socket.create_connection(("127.0.0.1", self.target_port), source_address=source_address)
            pair = (client, upstream)
            for a, b, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pump, args=(a, b, direction, pair), daemon=True).start()

    def passes(self, direction: str, data: bytes) -> bool:
        """Whether ``data`` going ``direction`` ("up": to the aggregator, "down": back) is relayed;
        False drops the connection (both sockets, reset)."""
        return True

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str, pair: tuple) -> None:
        try:
            while data := source.recv(65536):
                if self.record:
                    with self.lock:
                        self.seen += data
                if not self.passes(direction, data):
                    for s in pair:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        s.close()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
