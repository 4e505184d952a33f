"""Asynchronous rounds (``[task] mode = "async"``), FedBuff-style (Nguyen et al., 2022).

No site waits for another: the aggregator hands out its newest global model *version*; a site
trains on whatever version it downloaded and uploads the delta with that *base version*. An
update whose base is at most ``max_staleness`` versions old is accepted, weighted by

    w = examples * s(t),    s(t) = 1 / sqrt(1 + t),    t = current version - base version

(the polynomial staleness function of FedAsync, Xie et al. 2019, with exponent 1/2), and goes
into a buffer. When the buffer holds ``buffer_size`` (K) updates the enclave applies their
weighted mean (clipped to ``clip_norm`` when set) to the global model, producing the next
version. A slow site still contributes (its update is down-weighted, not dropped); a site that
disappears mid-upload holds nothing but its own upload (the buffer never waits for a site).

Each version is logged (``async_version``: the participants with their base versions,
staleness and weights, the model's digest) and each accepted update's receipt records its base
version (``round`` of the receipt is the base version; ``staleness`` and ``staleness_weight``
are added). ``rounds`` is the number of versions to produce. Robust strategies and central DP
assume synchronous rounds and are refused with ``mode = "async"``.

    [task]
    mode = "async"
    buffer_size = 2          # K: updates per new version
    max_staleness = 8        # older bases are refused (the site downloads the newest version)
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from aggregator.service import EventSink, LogEvents, Task, UpdateRefused
from protocol.tensors import encode_tensors, flatten, unflatten

#: How far ahead a version's "deadline" is announced (async versions have none).
NO_DEADLINE_S = 24 * 3600


def staleness_weight(staleness: int) -> float:
    """s(t) = 1 / sqrt(1 + t): 1 for a fresh update, 0.5 three versions late."""
    return 1.0 / math.sqrt(1.0 + max(0, staleness))


class AsyncDriver:
    """The :class:`aggregator.service.TaskDriver` of ``mode = "async"``. Thread-safe."""

    def __init__(
        self,
        config: Any,
        *,
        events: EventSink | None = None,
        live_sites: Callable[[], int] = lambda: 0,
        start_round: int = 1,
        model: dict[str, np.ndarray] | None = None,
        epsilon_rounds: int = 0,
        checkpoint: Callable[[int, int, bytes, Callable[[], bytes]], Callable[[], None]] | None = None,
    ) -> None:
        self.config = config
        self.spec = config.spec
        self.events = events or LogEvents()
        self.live_sites = live_sites
        self.checkpoint = checkpoint
        #: ``on_model(version, model, finished, model_sha256)``: a version's model now exists (aggregator.delivery).
        self.on_model: Callable[[int, bytes, bool, bytes], None] | None = None
        self.buffer_size = int(config.buffer_size)
        self.max_staleness = int(config.max_staleness)
        self._lock = threading.RLock()
        self.global_vector = flatten(model if model is not None else config.initial_model, self.spec).astype(np.float32)
        self.round = start_round  # the current version (the model sites should train on)
        self.attempt = 1
        self.finished = start_round > config.rounds
        self.history: dict[int, Any] = {}
        self._models: dict[int, bytes] = {start_round: self._encode(self.global_vector)}
        self._buffer: list[dict[str, Any]] = []
        self._contributed: set[tuple[str, int]] = set()  # (site, base version) accepted
        self._metrics: dict[int, set[str]] = {}
        self.dp_rounds = 0

    def _encode(self, vector: np.ndarray) -> bytes:
        return encode_tensors(unflatten(vector, self.spec))

    # --- what the service asks ---------------------------------------------------------------

    def task(self) -> Task:
        with self._lock:
            return Task(
                self.round if not self.finished else self.config.rounds + 1,
                self.spec,
                int((time.time() + NO_DEADLINE_S) * 1000),
                self.finished,
                self.config.rounds,
                self.config.evaluate,
                attempt=1,
                compression=self.config.compression,
                adapters=self.config.adapters,
            )

    def model_bytes(self, round_number: int) -> bytes:
        with self._lock:
            model = self._models.get(round_number)
        if model is None:
            raise UpdateRefused(
                f"no model version {round_number} (the newest is {self.round}; older than "
                f"{self.max_staleness} versions are dropped)",
                grpc.StatusCode.NOT_FOUND,
            )
        return model

    def final_model(self) -> dict[str, np.ndarray]:
        with self._lock:
            return unflatten(self.global_vector.copy(), self.spec)

    def check_upload(self, site_id: str, round_number: int, attempt: int) -> None:
        with self._lock:
            if self.finished:
                raise UpdateRefused("training is finished")
            if attempt != 1:
                raise UpdateRefused(f"async versions have one attempt, not {attempt}")
            if round_number > self.round or round_number < 1:
                raise UpdateRefused(f"version {round_number} does not exist (the newest is {self.round})")
            if self.round - round_number > self.max_staleness:
                raise UpdateRefused(
                    f"an update on version {round_number} is {self.round - round_number} versions stale "
                    f"(max_staleness {self.max_staleness}): download version {self.round}"
                )
            if (site_id, round_number) in self._contributed:
                raise UpdateRefused(
                    f"site {site_id!r} already submitted an update on version {round_number}",
                    grpc.StatusCode.ALREADY_EXISTS,
                )

    def accept_update(
        self,
        site_id: str,
        round_number: int,
        attempt: int,
        update: dict[str, np.ndarray],
        weight: float,
        digest: bytes,
        receipt: dict[str, Any],
    ) -> None:
        """Log the receipt with its base version and staleness (durably), then buffer the update."""
        vector = flatten(update, self.spec).astype(np.float32)
        with self._lock:
            self.check_upload(site_id, round_number, attempt)
            staleness = self.round - round_number
            factor = staleness_weight(staleness)
            self.events.record(
                "update_accepted",
                **receipt,
                base_version=round_number,
                staleness=staleness,
                staleness_weight=round(factor, 6),
            )
            self._contributed.add((site_id, round_number))
            self._buffer.append(
                {
                    "site": site_id,
                    "base_version": round_number,
                    "staleness": staleness,
                    "weight": weight * factor,
                    "update_sha256": digest.hex(),
                    "vector": vector,
                }
            )

    def close_if_complete(self) -> None:
        """Apply the buffer once it holds K updates."""
        with self._lock:
            if not self.finished and len(self._buffer) >= self.buffer_size:
                self._apply()

    def report_metrics(self, site_id: str, round_number: int, metrics: dict[str, float], examples: int) -> None:
        with self._lock:
            current = self.config.rounds + 1 if self.finished else self.round
            if not current - self.max_staleness <= round_number <= current:
                raise UpdateRefused(f"metrics are accepted for recent versions (up to {current}), not {round_number}")
            seen = self._metrics.setdefault(round_number, set())
            if site_id in seen:
                raise UpdateRefused(
                    f"site {site_id!r} already reported metrics for version {round_number}",
                    grpc.StatusCode.ALREADY_EXISTS,
                )
            self.events.record("metrics", site=site_id, round=round_number, metrics=metrics, examples=examples)
            seen.add(site_id)

    def tick(self) -> None:
        """Async versions have no deadline: nothing to close or retry."""

    # --- versions -------------------------------------------------------------------------------

    def _apply(self) -> None:
        """The weighted mean of the buffered deltas becomes the next version: checkpoint aside,
        ``async_version`` logged, checkpoint in place, then memory (as the synchronous driver)."""
        started = time.perf_counter()
        buffered = self._buffer
        total = sum(item["weight"] for item in buffered)
        delta = np.zeros_like(self.global_vector)
        for item in buffered:
            delta += (item["weight"] / total) * item["vector"]
        clip = getattr(self.config, "clip_norm", None)
        if clip is not None:
            norm = float(np.linalg.norm(delta))
            if norm > clip:
                delta *= clip / norm
        vector = (self.global_vector + delta).astype(np.float32)
        model = self._encode(vector)
        raw_digest = hashlib.sha256(model).digest()
        digest = raw_digest.hex()
        next_version = self.round + 1
        finished = next_version > self.config.rounds
        commit = self.checkpoint(next_version, 0, model, lambda: raw_digest) if self.checkpoint is not None else None
        participants = [
            {k: item[k] for k in ("site", "base_version", "staleness", "weight", "update_sha256")} for item in buffered
        ]
        self.events.record(
            "async_version",
            version=next_version,
            base=self.round,
            participants=participants,
            model_sha256=digest,
            staleness_function="1/sqrt(1+staleness)",
            aggregation_seconds=round(time.perf_counter() - started, 6),
        )
        if commit is not None:
            commit()
        self.global_vector = vector
        self.round = next_version
        self._models[next_version] = model
        for old in [v for v in self._models if v < next_version - self.max_staleness]:
            del self._models[old]
        self._contributed = {(s, v) for s, v in self._contributed if v >= next_version - self.max_staleness}
        self._buffer = []
        if self.on_model is not None:
            self.on_model(next_version, model, finished, raw_digest)
        self.finished = finished
        if finished:
            self.events.record("training_finished", rounds=self.config.rounds, model_sha256=digest)


__all__ = ["AsyncDriver", "staleness_weight"]
