"""What a peer may ask of the aggregator before it has proven anything: budgets, rates and
deadlines, applied before any parsing, signature or chain work.

Two budgets that never draw on each other:

* **handshake** (``GetEvidence``, ``GetChallenge``, ``Admit``, health checks): at most
  ``handshake_concurrency`` calls in progress in all, ``handshake_per_ip`` per client address
  and ``handshake_per_connection`` per connection, and ``handshake_rate_per_ip`` calls per
  second per address (a token bucket with ``handshake_burst_per_ip``);
* **session** (every call that proves possession of session keys): at most
  ``session_concurrency`` in all and ``session_per_session`` per session.

A call over a budget is refused at once (``RESOURCE_EXHAUSTED``); nothing is read. A call
admitted into a budget must deliver its request message within ``request_timeout`` or it is
ended, so calls that send headers and no body (the "bodiless" flood) hold a slot for seconds,
not forever. What an unauthenticated peer makes the aggregator log is bounded per entry and
rate-limited per address (``refusal_log_rate_per_ip``); the refusals over the rate are counted
and logged as one ``refusals_suppressed`` entry per address and period.

Why by hand: gRPC's ``maximum_concurrent_rpcs`` is one budget for every call, counted before
the request arrives, so 256 bodiless calls locked every site out; no gRPC option separates
unauthenticated from authenticated work or limits per client address.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

#: Client addresses tracked at once (least recently seen idle ones are forgotten first).
MAX_TRACKED_PEERS = 65536


@dataclass(frozen=True)
class Limits:
    request_timeout: float = 10.0
    handshake_concurrency: int = 256
    handshake_per_ip: int = 32
    handshake_per_connection: int = 8
    handshake_rate_per_ip: float = 20.0
    handshake_burst_per_ip: int = 80
    #: Expensive steps inside the handshake budget: evidence made at once, appraisals at once.
    evidence_concurrency: int = 4
    appraisal_concurrency: int = 2
    session_concurrency: int = 1024
    session_per_session: int = 8
    #: The longest a GetTask long poll (``TaskRequest.wait_ms``) is held, seconds: below the
    #: server's 2 s stop grace, so a waiting site never delays a shutdown.
    task_wait: float = 1.5
    #: An upload must finish within this, and after ``upload_rate_grace`` seconds keep at least this rate.
    upload_timeout: float = 3600.0
    upload_min_rate: float = 64 * 1024
    upload_rate_grace: float = 10.0
    #: Uploads whose connection dropped, kept to resume (aggregator/resume.py): at most this many, in all
    #: at most this many bytes of receive buffers (the oldest is dropped first), one per session.
    parked_uploads: int = 16
    parked_upload_bytes: int = 8 * 1024**3
    #: An upload up to this size is received in memory; a larger one is sealed to disk in blocks as
    #: it arrives (aggregator/spool.py): the memory an upload holds is bounded whatever the model's size.
    upload_memory_bytes: int = 64 * 1024**2
    refusal_log_rate_per_ip: float = 5.0
    refusal_log_burst_per_ip: int = 20


def peer_address(peer: str) -> tuple[str, str]:
    """(client address, connection) of a gRPC peer string such as ``ipv4:127.0.0.1:5123``."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, _port = rest.rpartition(":")
        return host.strip("[]") or rest, peer
    return peer or "unknown", peer or "unknown"


@dataclass
class _Bucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Peer:
    calls: _Bucket
    logs: _Bucket
    concurrent: int = 0
    suppressed: int = 0


@dataclass
class Ticket:
    """A call's place in a budget; ``release`` it exactly once when the call ends."""

    release_fn: Callable[[], None]
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.release_fn()


@dataclass
class Gate:
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._connections: dict[str, int] = {}
        self._sessions: dict[bytes, int] = {}
        self._handshakes = 0
        self._session_calls = 0

    def _peer(self, address: str, now: float) -> _Peer:
        peer = self._peers.get(address)
        if peer is None:
            limits = self.limits
            peer = _Peer(
                _Bucket(
                    limits.handshake_rate_per_ip, limits.handshake_burst_per_ip, limits.handshake_burst_per_ip, now
                ),
                _Bucket(
                    limits.refusal_log_rate_per_ip,
                    limits.refusal_log_burst_per_ip,
                    limits.refusal_log_burst_per_ip,
                    now,
                ),
            )
            self._peers[address] = peer
            if len(self._peers) > MAX_TRACKED_PEERS:
                for old, state in list(self._peers.items()):
                    if state.concurrent == 0 and state.suppressed == 0:
                        del self._peers[old]
                        break
        self._peers.move_to_end(address)
        return peer

    def enter_handshake(self, peer: str) -> Ticket | str:
        """A ticket, or why the call is refused (over a budget or the peer's rate)."""
        address, connection = peer_address(peer)
        limits = self.limits
        with self._lock:
            now = self.clock()
            state = self._peer(address, now)
            if self._handshakes >= limits.handshake_concurrency:
                return "the aggregator is handling as many handshakes as it allows; retry shortly"
            if state.concurrent >= limits.handshake_per_ip:
                return f"too many handshakes in progress from {address}"
            if self._connections.get(connection, 0) >= limits.handshake_per_connection:
                return "too many handshakes in progress on this connection"
            if not state.calls.take(now):
                return f"too many handshakes from {address}: at most {limits.handshake_rate_per_ip:g} per second"
            self._handshakes += 1
            state.concurrent += 1
            self._connections[connection] = self._connections.get(connection, 0) + 1

        def release() -> None:
            with self._lock:
                self._handshakes -= 1
                state.concurrent -= 1
                left = self._connections.get(connection, 1) - 1
                if left:
                    self._connections[connection] = left
                else:
                    self._connections.pop(connection, None)

        return Ticket(release)

    def enter_session(self, session_id: bytes) -> Ticket | str:
        limits = self.limits
        with self._lock:
            if self._session_calls >= limits.session_concurrency:
                return "the aggregator is handling as many calls as it allows; retry shortly"
            if self._sessions.get(session_id, 0) >= limits.session_per_session:
                return f"at most {limits.session_per_session} calls of one session at once"
            self._session_calls += 1
            self._sessions[session_id] = self._sessions.get(session_id, 0) + 1

        def release() -> None:
            with self._lock:
                self._session_calls -= 1
                left = self._sessions.get(session_id, 1) - 1
                if left:
                    self._sessions[session_id] = left
                else:
                    self._sessions.pop(session_id, None)

        return Ticket(release)

    def may_log(self, peer: str) -> bool:
        """Whether a refusal of this peer may be logged now (else it is counted as suppressed)."""
        address, _ = peer_address(peer)
        with self._lock:
            state = self._peer(address, self.clock())
            if state.logs.take(self.clock()):
                return True
            state.suppressed += 1
            return False

    def drain_suppressed(self) -> dict[str, int]:
        """Refusals not logged since the last call, per client address."""
        with self._lock:
            counts = {address: state.suppressed for address, state in self._peers.items() if state.suppressed}
            for address in counts:
                self._peers[address].suppressed = 0
            return counts

    @property
    def in_progress(self) -> tuple[int, int]:
        """(handshake calls, session calls) in progress."""
        with self._lock:
            return self._handshakes, self._session_calls


class MemoryBudget:
    """Bytes a kind of holder (a vendor) may keep in memory: at most ``per_holder`` each and
    ``total`` in all (vendor models being uploaded and the re-sealed models kept for the sites).
    ``reserve`` answers a ticket that gives the bytes back, or why the bytes are refused."""

    def __init__(self, per_holder: int, total: int) -> None:
        self.per_holder = per_holder
        self.total = total
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._sum = 0

    def reserve(self, holder: str, amount: int) -> Ticket | str:
        with self._lock:
            held = self._held.get(holder, 0)
            if held + amount > self.per_holder:
                return f"{holder!r} would hold {held + amount} bytes in memory, over its {self.per_holder}"
            if self._sum + amount > self.total:
                return f"the aggregator holds {self._sum} bytes of vendor models; {amount} more is over {self.total}"
            self._held[holder] = held + amount
            self._sum += amount

        def release() -> None:
            with self._lock:
                left = self._held.get(holder, amount) - amount
                if left > 0:
                    self._held[holder] = left
                else:
                    self._held.pop(holder, None)
                self._sum -= amount

        return Ticket(release)

    @property
    def held(self) -> int:
        with self._lock:
            return self._sum
