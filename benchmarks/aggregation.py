"""Aggregation kernels side by side with Flower, NVFlare, numpy and torch (issue 3).

One process, one run, the same data for everyone. Prints one JSON object:

    python benchmarks/aggregation.py            # N=10,P=10M and N=100,P=1M (a few minutes)
    python benchmarks/aggregation.py --quick    # small smoke run
    python benchmarks/aggregation.py --large-p 2000000 --sweep-max 10000000   # modest, on a shared machine

The same run measures this machine's memory bandwidth (``bandwidth``: numpy streaming copy,
in-place add and triad on one core, and a one-pass triad, in-place add, read and copy on every
core, over arrays far larger than the caches) and reports each kernel against its *byte floor*:
the least bytes it must move (read every input once, write the output once) at the best
streaming bandwidth measured (here the in-place add's, which is stricter than STREAM's copy and
triad: their writes first read the line they write, bytes STREAM does not count; the fractions
at those two probes' GB/s are reported beside the judged ones, ``at_stream_probes``).
``fraction_of_floor`` = floor time / our median time (1.0 = at the memory's speed). A
one-pass read on every core measures reading alone, which on this machine is slower than
the mixed probes: each operation also gets the floor for
its own mix of reads and writes (``floor_ms_for_its_mix``: the larger of its byte floor and
the time to read its inputs) and the best ``fraction_of_floor`` that mix allows. This VM's
bandwidth can double or halve within a run, so fedavg and the Accumulator are also timed in
the same passes as the all-core probes (``same_pass_probes``) and each pass is set against
its own probes (``byte_floor.same_pass``: the median over passes). Item 8 of issue 19
(``floor_targets``, at P=10M) is judged on those same-pass fractions, against the byte floor
as stated. At N=10 fedavg is also timed against the least work that moves its bytes (a plain
sum of the rows, ``least_work_probe``): ``fraction_of_least_work`` = that time / ours.
``accumulator_vs_torch`` sweeps update sizes from 10K to 100M values: N = 10 updates added
to a fresh accumulator and the mean taken, ours against torch's streaming ``add_`` (then
``div_``), with both as fractions of the floor.

Ratios are peer_ms / ours_ms (> 1 means we are faster), of median times; the sweep also
gives the ratio of best runs. torch runs on every core (``torch.set_num_threads``). Each
timed call follows a pause and untimed calls of the same candidate (``GAP_S``, ``WARM_S``):
no candidate shares the cores with another's spinning thread pool, and each runs with its own
pool awake. The pause is at least twice as long as the previous candidate's calls
(``SETTLE_FACTOR``): no candidate runs in the kernel's aftermath of another's large
allocations. JIT compilation is kept out of every timing (each kernel is warmed first) and
reported in the ``jit`` section, which also times a new process reaching its first result
with the on-disk cache warm. Peers
come from the ``bench`` extra (``pip install -e '.[bench]'``); one that cannot be
imported is reported as unavailable in the JSON, with the import error.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# This script's packages are importable once sys.path names the repository: imports after it (E402).
import native  # noqa: E402

TRIM_BETA = 0.1
KRUM_F = 2

# (operation, peer, minimum ratio peer/ours) per config; the acceptance lines of issue 3.
TARGETS: dict[str, list[tuple[str, str, float]]] = {
    "large_n10": [
        ("fedavg", "torch_add_", 1.0),
        ("fedavg", "flower", 5.0),
        ("accumulator", "torch_add_", 0.8),
        ("accumulator", "flower", 5.0),
        ("coordinate_median", "flower", 30.0),
        ("trimmed_mean", "flower", 30.0),
        ("krum", "flower", 10.0),
    ],
    "many_n100": [
        ("fedavg", "torch_add_", 1.0),
        ("fedavg", "flower", 5.0),
        ("accumulator", "torch_add_", 0.8),
        ("accumulator", "flower", 5.0),
        ("coordinate_median", "flower", 10.0),
        ("trimmed_mean", "flower", 10.0),
        ("krum", "flower", 10.0),
    ],
}


# --- the machine's memory bandwidth, and byte floors ---------------------------------------------

#: Bytes per value each streaming probe moves (nominal: read each input, write the output once).
_STREAMS: dict[str, int] = {
    "copy": 8,
    "add_in_place": 12,
    "triad": 12,
    "triad_all_cores": 12,
    "add_in_place_all_cores": 12,
    "read_all_cores": 4,
    "copy_all_cores": 8,
}

#: The probes the issue names ("a streaming copy/triad"), on every core, as STREAM counts their
#: bytes. The floor's bandwidth is the best probe, which here is the in-place add: its write goes
#: to a line it has just read, so no byte it moves goes uncounted. Each operation's fraction of
#: its byte floor at these probes' GB/s is reported beside the judged one (``at_stream_probes``).
STREAM_PROBES = ("copy_all_cores", "triad_all_cores")


@functools.cache
def _all_core_probes() -> tuple[Callable[..., None], Callable[..., None], Callable[..., float], Callable[..., None]]:
    """One-pass triad, in-place add, read (a sum) and copy on every core (numba ``prange``):
    one core alone may not draw all of the memory's bandwidth, and our kernels use every core.
    The triad and the copy are STREAM's (a = b + s * c; b = a), their bytes counted as STREAM
    counts them: each array once, not the reads that a write to memory not in cache makes
    first.

    The read probe is there because reading alone is slower than a mix of reads and writes
    on this machine: a sum on both cores reads 47-48 GB/s while the in-place add (two
    reads, one write) moves 66 GB/s (and 75 against 118 when the host gives the VM more
    bandwidth). A kernel that mostly reads (fedavg reads N updates, writes one) cannot
    go faster than its reads allow, whatever the mixed probes say."""
    import numba

    @numba.njit(parallel=True, nogil=True)
    def triad(a: np.ndarray, b: np.ndarray, c: np.ndarray, s: float) -> None:
        f = np.float32(s)
        for i in numba.prange(a.shape[0]):
            a[i] = b[i] + f * c[i]

    @numba.njit(parallel=True, nogil=True)
    def add(a: np.ndarray, b: np.ndarray) -> None:
        for i in numba.prange(a.shape[0]):
            a[i] += b[i]

    @numba.njit(parallel=True, nogil=True, fastmath={"reassoc"})
    def read(a: np.ndarray) -> float:
        total = 0.0
        for i in numba.prange(a.shape[0]):
            total += a[i]
        return total

    @numba.njit(parallel=True, nogil=True)
    def copy(b: np.ndarray, a: np.ndarray) -> None:
        for i in numba.prange(a.shape[0]):
            b[i] = a[i]

    return triad, add, read, copy


#: Rows of the least-work probe below (the N of the configuration item 8 is judged at).
SUM_ROWS_PROBE_N = 10


def _sum_rows_probe() -> Callable[[np.ndarray, np.ndarray], None]:
    """out = the plain sum of 10 rows (float32, no weights, one pass on every core): the least
    work that moves exactly fedavg's bytes at N=10 (read each row once, write the output
    once). Written out for 10 rows so that each core streams all of them at once with the
    sums in registers; a loop over N rows would not vectorise (numba has no way to say so)."""
    import numba

    @numba.njit(parallel=True, nogil=True, fastmath={"reassoc"})
    def sum_rows(x: np.ndarray, out: np.ndarray) -> None:
        for t in numba.prange(x.shape[1]):
            out[t] = (
                ((x[0, t] + x[1, t]) + (x[2, t] + x[3, t]))
                + ((x[4, t] + x[5, t]) + (x[6, t] + x[7, t]))
                + (x[8, t] + x[9, t])
            )

    return sum_rows


def bench_bandwidth(values: int = 32 * 1024 * 1024, repeats: int = 7) -> dict[str, Any]:
    """Streaming copy (b = a), in-place add (a += b) and triad (a = b + s * c, numpy's two
    passes counted as one: a lower bound on its speed) over float32 arrays of ``values``
    (128 MiB each) on one core, and a one-pass triad and in-place add on every core; GB/s
    of the median run. ``best_gbps``, the floor's bandwidth, is the best of them."""
    a = np.ones(values, np.float32)
    b = np.full(values, 2.0, np.float32)
    c = np.full(values, 3.0, np.float32)
    tmp = np.empty(values, np.float32)

    def triad() -> None:
        np.multiply(c, np.float32(0.5), out=tmp)
        np.add(b, tmp, out=a)

    triad_all, add_all, read_all, copy_all = _all_core_probes()
    triad_all(a, b, c, 0.5)  # compile outside the timing
    add_all(a, b)
    read_all(c)
    copy_all(b, a)
    probes: dict[str, Callable[[], object]] = {
        "copy": lambda: np.copyto(b, a),
        "add_in_place": lambda: np.add(a, b, out=a),
        "triad": triad,
        "triad_all_cores": lambda: triad_all(a, b, c, 0.5),
        "add_in_place_all_cores": lambda: add_all(a, b),
        "read_all_cores": lambda: read_all(c),
        "copy_all_cores": lambda: copy_all(b, a),
    }
    timed = _time_interleaved({name: (fn, repeats) for name, fn in probes.items()})
    out: dict[str, Any] = {"values": values, "bytes_per_array": 4 * values}
    for name, t in timed.items():
        nominal = _STREAMS[name] * values
        out[name] = {
            **t,
            "bytes_moved": nominal,
            "gbps": round(nominal / (t["median_ms"] / 1000.0) / 1e9, 2),
            "gbps_best_run": round(nominal / (t["min_ms"] / 1000.0) / 1e9, 2),
        }
    out["best_gbps"] = max(out[name]["gbps"] for name in _STREAMS)
    # the best single run of any probe: the floor for our best runs (load only ever slows a run)
    out["best_gbps_best_run"] = max(out[name]["gbps_best_run"] for name in _STREAMS)
    out["read_gbps"] = out["read_all_cores"]["gbps"]
    out["read_gbps_best_run"] = out["read_all_cores"]["gbps_best_run"]
    out["note"] = (
        "triad's bytes are counted once (numpy makes two passes): its GB/s is a lower bound; "
        "the *_all_cores probes are one pass on every core (numba prange); read_gbps (a sum on "
        "every core) is the speed of reading alone, which bounds a kernel that mostly reads"
    )
    return out


def byte_floor(operation: str, n: int, p: int) -> int:
    """The least bytes ``operation`` moves on N updates of P float32 values: every input read
    once, the result written once (the Accumulator also reads and writes its sum per update)."""
    model = 4 * p
    if operation.startswith("accumulator"):
        return n * 3 * model + 2 * model  # per add: read the update, read and write the sum; then scale
    if operation == "krum":
        return n * model + model
    return (n + 1) * model  # fedavg, coordinate_median, trimmed_mean: read the stack, write the result


def bytes_read(operation: str, n: int, p: int) -> int:
    """The bytes of ``byte_floor`` that are reads (every input once; the Accumulator's sum once
    per update and once to scale it)."""
    model = 4 * p
    if operation.startswith("accumulator"):
        return n * 2 * model + model
    return n * model


def add_floors(config: dict[str, Any], bandwidth: dict[str, Any]) -> None:
    """Each operation's byte floor (ms at the best probe's GB/s) and our fraction of it, in
    place; our best run against the floor at the best single bandwidth run; and the floor for
    the operation's mix of reads and writes: it must move all its bytes (at the best probe's
    speed) *and* read its inputs (at the read probe's), so no kernel doing the operation can
    take less than the larger of the two. ``most_fraction_of_floor_reachable`` is the best
    ``fraction_of_floor`` that mix allows in this run."""
    n, p = config["N"], config["P"]
    gbps, gbps_best_run = bandwidth["best_gbps"], bandwidth["best_gbps_best_run"]
    for op, per_op in config["operations"].items():
        floor_ms = byte_floor(op, n, p) / (gbps * 1e9) * 1000.0
        floor_best_ms = byte_floor(op, n, p) / (gbps_best_run * 1e9) * 1000.0
        read_ms = bytes_read(op, n, p) / (bandwidth["read_gbps"] * 1e9) * 1000.0
        mix_ms = max(floor_ms, read_ms)
        per_op["byte_floor"] = {
            "bytes": byte_floor(op, n, p),
            "floor_ms": round(floor_ms, 3),
            "fraction_of_floor": round(floor_ms / per_op["ours"]["median_ms"], 3),
            "floor_ms_best_bandwidth_run": round(floor_best_ms, 3),
            "fraction_of_floor_best_run": round(floor_best_ms / per_op["ours"]["min_ms"], 3),
            "bytes_read": bytes_read(op, n, p),
            "read_floor_ms": round(read_ms, 3),
            "floor_ms_for_its_mix": round(mix_ms, 3),
            "fraction_of_floor_for_its_mix": round(mix_ms / per_op["ours"]["median_ms"], 3),
            "most_fraction_of_floor_reachable": round(floor_ms / mix_ms, 3),
        }
        if "same_pass_probes" in per_op:
            per_op["byte_floor"]["same_pass"] = _same_pass_fractions(op, n, p, per_op)


#: Values in each all-core probe's arrays (128 MiB of float32, far beyond the caches).
PROBE_VALUES = 32 * 1024 * 1024


def _ms_at(nbytes: int, probe: str, probe_ms: float) -> float:
    """Milliseconds to move ``nbytes`` at the GB/s of ``probe`` (an all-core probe over
    ``PROBE_VALUES`` values) in a pass where it took ``probe_ms``."""
    return nbytes * probe_ms / (_STREAMS[probe] * PROBE_VALUES)


def _same_pass_fractions(op: str, n: int, p: int, per_op: dict[str, Any]) -> dict[str, Any]:
    """The fractions of ``add_floors``, each pass against the probes timed in that same pass
    (seconds apart), then the median over passes."""
    probes = per_op["same_pass_probes"]
    add_ms, read_ms = probes["add_in_place_all_cores"]["samples_ms"], probes["read_all_cores"]["samples_ms"]
    ours_ms = per_op["ours"]["samples_ms"]
    moved, read = byte_floor(op, n, p), bytes_read(op, n, p)
    floors, mixes, reachable = [], [], []
    for add_t, read_t, ours_t in zip(add_ms, read_ms, ours_ms, strict=False):
        floor_t = _ms_at(moved, "add_in_place_all_cores", add_t)
        read_floor_t = _ms_at(read, "read_all_cores", read_t)
        floors.append(floor_t / ours_t)
        mixes.append(max(floor_t, read_floor_t) / ours_t)
        reachable.append(floor_t / max(floor_t, read_floor_t))
    # the byte floor at each of STREAM's probes' GB/s instead of the best probe's (information)
    at_stream = {
        name: round(
            statistics.median(
                _ms_at(moved, name, probe_t) / ours_t
                for probe_t, ours_t in zip(probes[name]["samples_ms"], ours_ms, strict=False)
            ),
            3,
        )
        for name in STREAM_PROBES
    }
    return {
        "passes": len(floors),
        "fraction_of_floor": round(statistics.median(floors), 3),
        "at_stream_probes": at_stream,
        "fraction_of_floor_for_its_mix": round(statistics.median(mixes), 3),
        "most_fraction_of_floor_reachable": round(statistics.median(reachable), 3),
        "fractions_of_floor_by_pass": [round(f, 3) for f in floors],
    }


#: Issue 19, item 8: these operations at >= 0.8 of their byte floor at N=10, P=10M (judged
#: only at that size: smaller runs fit in the caches, where a "floor" of memory means little).
FLOOR_TARGET = 0.8
FLOOR_TARGET_P = 10_000_000
FLOOR_TARGET_OPERATIONS = ("fedavg", "fedavg_reused_output", "accumulator", "accumulator_reused_buffer")


def evaluate_floor_targets(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Item 8's lines, judged as stated (against the all-core in-place add's GB/s, timed in the
    same passes as the kernel: ``byte_floor.same_pass``), with the fraction against the probes
    of the run's start, and against the floor for the operation's mix, beside them
    (information, not the judgement)."""
    lines = []
    for op in FLOOR_TARGET_OPERATIONS:
        floor = config["operations"][op]["byte_floor"]
        same_pass = floor["same_pass"]
        lines.append(
            {
                "target": f"{op} >= {FLOOR_TARGET} of its byte floor at N={config['N']}, P={config['P']}",
                "fraction_of_floor": same_pass["fraction_of_floor"],
                "meets_target": same_pass["fraction_of_floor"] >= FLOOR_TARGET,
                "fraction_of_floor_probes_at_start": floor["fraction_of_floor"],
                "most_fraction_of_floor_reachable": same_pass["most_fraction_of_floor_reachable"],
                "fraction_of_floor_for_its_mix": same_pass["fraction_of_floor_for_its_mix"],
                "meets_for_its_mix": same_pass["fraction_of_floor_for_its_mix"] >= FLOOR_TARGET,
                "fraction_of_floor_at_stream_probes": same_pass["at_stream_probes"],
                **(
                    {"fraction_of_least_work": config["operations"][op]["fraction_of_least_work"]}
                    if "fraction_of_least_work" in config["operations"][op]
                    else {}
                ),
            }
        )
    return lines


def bench_accumulator_sweep(sizes: list[int], n: int, gbps: float, torch: Any) -> dict[str, Any]:
    """Ours against torch's streaming ``add_`` at each size: N adds into a fresh accumulator, then
    the mean. Repeats scale down with size (the smallest sizes need many to time)."""
    out: dict[str, Any] = {"N": n, "what": "fresh accumulator, N weighted adds, then the mean", "sizes": {}}
    weights = [float(i + 1) for i in range(n)]
    total = float(sum(weights))
    for p in sizes:
        rng = np.random.default_rng(p)
        # two distinct updates, alternated: large sizes would not fit N copies on a shared machine
        updates = [rng.standard_normal(p, dtype=np.float32) for _ in range(min(n, 2))]

        def ours(p: int = p, updates: list[np.ndarray] = updates) -> np.ndarray:
            acc = native.Accumulator(p)
            for i, w in enumerate(weights):
                acc.add(updates[i % len(updates)], w)
            return acc.result()

        candidates: Candidates = {}
        repeats = int(min(200, max(3, 2e8 // (n * p))))
        candidates["ours"] = (ours, repeats)
        entry: dict[str, Any] = {}
        if torch is not None:
            tensors = [torch.from_numpy(u) for u in updates]

            def torch_add_(p: int = p, tensors: list[Any] = tensors) -> Any:
                acc = torch.zeros(p, dtype=torch.float32)
                for i, w in enumerate(weights):
                    acc.add_(tensors[i % len(tensors)], alpha=w)
                return acc.div_(total)

            entry["max_abs_diff_vs_torch"] = _max_diff(ours(), torch_add_().numpy())
            candidates["torch_add_"] = (torch_add_, repeats)
        timed = _time_interleaved(candidates, warmup=2)
        floor_ms = byte_floor("accumulator", n, p) / (gbps * 1e9) * 1000.0
        entry.update(timed)
        entry["floor_ms"] = round(floor_ms, 4)
        entry["fraction_of_floor"] = {k: round(floor_ms / v["median_ms"], 3) for k, v in timed.items()}
        if "torch_add_" in timed:
            entry["torch_over_ours"] = round(timed["torch_add_"]["median_ms"] / timed["ours"]["median_ms"], 2)
            entry["torch_over_ours_best_runs"] = round(timed["torch_add_"]["min_ms"] / timed["ours"]["min_ms"], 2)
            entry["meets_target"] = entry["torch_over_ours"] >= 1.0
        out["sizes"][str(p)] = entry
        del updates, candidates
    out["target"] = "Accumulator >= 1.0x torch streaming add_ at every size"
    return out


def _import_peer(name: str) -> tuple[Any, str | None]:
    try:
        if name == "flower":
            import flwr
            from flwr.server.strategy import aggregate as mod

            return (mod, flwr.__version__), None
        if name == "nvflare":
            import nvflare
            from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

            return (WeightedAggregationHelper, nvflare.__version__), None
        if name == "torch":
            import torch

            # every core, as our kernels use (torch may default to fewer in a container)
            torch.set_num_threads(os.cpu_count() or 1)
            return (torch, torch.__version__), None
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, not hidden
        return None, f"{type(exc).__name__}: {exc}"
    raise ValueError(name)


def _max_diff(a: Any, b: Any) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


#: Pause before each timed call. Thread pools spin a while after a call (torch's OpenMP
#: workers ~9 ms here, our helpers ~5 ms); in a round-robin the next candidate would share
#: the cores with the previous one's spinning threads. After the pause the candidate itself
#: runs untimed for ``WARM_S`` (at least once), which wakes its own pool (waking a sleeping
#: thread takes ~0.5 ms and up to ~8 ms on this shared VM), so each timed call runs hot and alone.
GAP_S = 0.012
WARM_S = 0.005
#: ...and at least this many times as long as the previous candidate's calls took. A call that
#: allocates and frees hundreds of MB (numpy's ``np.stack``, Flower's and NVFlare's
#: temporaries) leaves the kernel work to do after it (freeing, compacting huge pages) that
#: takes a core and memory bandwidth for 50-100 ms here: fedavg timed 12 ms after a 400 MB
#: ``np.stack`` took 11.1 ms against 9.4 ms alone, and the same after a 100 ms pause.
SETTLE_FACTOR = 2.0


def _time_interleaved(candidates: dict[str, tuple[Callable[[], object], int]], warmup: int = 1) -> dict[str, Any]:
    """Time candidates round-robin (A B C A B C ...) so that all of them see the same
    background load; the machine is shared, and load comes and goes in bursts.
    Each candidate is (fn, repeats); a candidate with fewer repeats drops out early.
    Warm-up (JIT, allocator, caches) runs for candidates with repeats >= 3 only, so
    the slow peers are not run more often than they are timed. Each timed call follows a
    pause of ``GAP_S`` (or ``SETTLE_FACTOR`` times the previous candidate's calls, if longer)
    and, for those same candidates, untimed calls (see GAP_S)."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for fn, reps in candidates.values():
        for _ in range(warmup if reps >= 3 else 0):
            fn()
    rounds = max(reps for _, reps in candidates.values())
    names = list(candidates)
    previous = 0.0  # seconds the previous candidate's calls took (warm-up and timed)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn, reps = candidates[name]
            if r < reps:
                time.sleep(max(GAP_S, SETTLE_FACTOR * previous))
                warm_from = time.perf_counter()
                if reps >= 3:
                    fn()
                    while time.perf_counter() - warm_from < WARM_S:
                        fn()
                start = time.perf_counter()
                fn()
                end = time.perf_counter()
                samples[name].append((end - start) * 1000.0)
                previous = end - warm_from
    return {
        name: {
            "median_ms": round(statistics.median(v), 3),
            "min_ms": round(min(v), 3),
            "repeats": len(v),
            # in pass order: sample k of every candidate was timed in pass k, within a few seconds
            "samples_ms": [round(x, 3) for x in v],
        }
        for name, v in samples.items()
    }


Candidates = dict[str, tuple[Callable[[], object], int]]


@dataclass
class _Case:
    """One (N, P) configuration: the updates every candidate aggregates, and what is collected."""

    p: int
    stack: np.ndarray
    updates: list[np.ndarray]
    examples: list[int]
    weights: list[float]
    repeats: int
    peer_repeats: int
    checks: dict[str, Any] = field(default_factory=dict)
    #: fedavg candidates (ours, numpy, torch, flower, nvflare), timed together.
    mean_group: Candidates = field(default_factory=dict)
    #: the peers of each robust operation.
    robust_peers: dict[str, Candidates] = field(
        default_factory=lambda: {"coordinate_median": {}, "trimmed_mean": {}, "krum": {}}
    )

    def accumulate(self, out: np.ndarray | None = None) -> np.ndarray:
        acc = native.Accumulator(self.p, out=out)
        for u, w in zip(self.updates, self.weights, strict=True):
            acc.add(u, w)
        return acc.result()


def bench_config(n: int, p: int, repeats: int, peer_repeats: int, peers: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(1234)
    stack = rng.standard_normal((n, p), dtype=np.float32)
    examples = [int(v) for v in rng.integers(100, 1000, size=n)]
    case = _Case(p, stack, [stack[i] for i in range(n)], examples, [float(v) for v in examples], repeats, peer_repeats)
    ours_fedavg = native.fedavg(case.updates, case.weights)
    case.checks["accumulator_vs_fedavg_max_abs_diff"] = _max_diff(case.accumulate(), ours_fedavg)
    reused = np.empty(p, dtype=np.float32)
    case.mean_group.update(
        {
            "ours_fedavg": (lambda: native.fedavg(case.updates, case.weights), repeats),
            # the same into an output buffer kept from call to call (``out=``): no fresh pages
            # (the Accumulator's below likewise; both share one buffer, used in turn)
            "ours_fedavg_reused_output": (lambda: native.fedavg(case.updates, case.weights, out=reused), repeats),
            "ours_accumulator": (case.accumulate, repeats),
            "ours_accumulator_reused_buffer": (lambda: case.accumulate(reused), repeats),
        }
    )
    # The floor's probes in the same passes as the kernels: this VM's memory bandwidth can
    # double or halve within a run (docs/performance.md), so a probe timed minutes earlier
    # can describe another machine. Same arrays and loops as ``bench_bandwidth``'s.
    triad_all, add_all, read_all, copy_all = _all_core_probes()
    probe_a, probe_b = np.ones(PROBE_VALUES, np.float32), np.full(PROBE_VALUES, 2.0, np.float32)
    probe_c = np.empty(PROBE_VALUES, np.float32)  # written by the triad and the copy
    case.mean_group["probe_add_in_place_all_cores"] = (lambda: add_all(probe_a, probe_b), repeats)
    case.mean_group["probe_read_all_cores"] = (lambda: read_all(probe_b), repeats)
    case.mean_group["probe_triad_all_cores"] = (lambda: triad_all(probe_c, probe_b, probe_a, 0.5), repeats)
    case.mean_group["probe_copy_all_cores"] = (lambda: copy_all(probe_c, probe_b), repeats)
    if n == SUM_ROWS_PROBE_N:
        sum_rows, probe_out = _sum_rows_probe(), np.empty(p, dtype=np.float32)
        sum_rows(case.stack, probe_out)  # compile outside the timing
        case.mean_group["probe_sum_rows"] = (lambda: sum_rows(case.stack, probe_out), repeats)
    _add_numpy(case, ours_fedavg)
    torch_mod = peers["torch"][0]
    tensors = _add_torch(case, torch_mod[0], ours_fedavg) if torch_mod is not None else None
    if peers["flower"][0] is not None:
        _add_flower(case, peers["flower"][0][0], ours_fedavg)
    if peers["nvflare"][0] is not None:
        _add_nvflare(case, peers["nvflare"][0][0], ours_fedavg, tensors)
    return {"N": n, "P": p, "operations": _time_operations(case), "checks": case.checks}


def _add_numpy(case: _Case, ours_fedavg: np.ndarray) -> None:
    wn = np.asarray(case.weights, dtype=np.float32) / np.float32(sum(case.weights))
    case.checks["fedavg_vs_numpy_max_abs_diff"] = _max_diff(
        ours_fedavg, np.tensordot(wn, np.stack(case.updates), axes=1)
    )
    case.mean_group["numpy"] = (lambda: np.tensordot(wn, np.stack(case.updates), axes=1), case.repeats)


def _add_torch(case: _Case, torch: Any, ours_fedavg: np.ndarray) -> list[Any]:
    tensors = [torch.from_numpy(u) for u in case.updates]
    total = float(sum(case.weights))

    def torch_stream() -> Any:
        acc = torch.zeros(case.p, dtype=torch.float32)
        for t, w in zip(tensors, case.weights, strict=True):
            acc.add_(t, alpha=w)
        return acc.div_(total)

    case.checks["fedavg_vs_torch_max_abs_diff"] = _max_diff(ours_fedavg, torch_stream().numpy())
    case.mean_group["torch_add_"] = (torch_stream, case.repeats)
    return tensors


def _add_flower(case: _Case, fl: Any, ours_fedavg: np.ndarray) -> None:
    results = [([u], e) for u, e in zip(case.updates, case.examples, strict=True)]
    ours_krum, ours_sel = native.krum(case.stack, KRUM_F)
    checks = case.checks
    checks["fedavg_vs_flower_max_abs_diff"] = _max_diff(ours_fedavg, fl.aggregate(results)[0])
    checks["median_vs_flower_max_abs_diff"] = _max_diff(
        native.coordinate_median(case.stack), fl.aggregate_median(results)[0]
    )
    checks["trimmed_mean_vs_flower_max_abs_diff"] = _max_diff(
        native.trimmed_mean(case.stack, TRIM_BETA), fl.aggregate_trimmed_avg(results, TRIM_BETA)[0]
    )
    checks["krum_same_selection_as_flower"] = bool(np.array_equal(fl.aggregate_krum(results, KRUM_F, 0)[0], ours_krum))
    checks["krum_selected"] = [int(i) for i in ours_sel]
    case.mean_group["flower"] = (lambda: fl.aggregate(results), case.peer_repeats)
    case.robust_peers["coordinate_median"]["flower"] = (lambda: fl.aggregate_median(results), case.peer_repeats)
    case.robust_peers["trimmed_mean"]["flower"] = (
        lambda: fl.aggregate_trimmed_avg(results, TRIM_BETA),
        case.peer_repeats,
    )
    case.robust_peers["krum"]["flower"] = (lambda: fl.aggregate_krum(results, KRUM_F, 0), case.peer_repeats)


def _add_nvflare(case: _Case, helper_cls: Any, ours_fedavg: np.ndarray, tensors: list[Any] | None) -> None:
    def nvflare(inputs: list[Any]) -> Any:
        helper = helper_cls()
        for i, (u, w) in enumerate(zip(inputs, case.weights, strict=True)):
            helper.add({"w": u}, w, f"site-{i}", 0)
        return helper.get_result()["w"]

    case.checks["fedavg_vs_nvflare_max_abs_diff"] = _max_diff(ours_fedavg, nvflare(case.updates))
    case.mean_group["nvflare"] = (lambda: nvflare(case.updates), case.repeats)
    if tensors is not None:
        case.mean_group["nvflare_torch"] = (lambda: nvflare(tensors), case.repeats)


def _time_operations(case: _Case) -> dict[str, dict[str, Any]]:
    """Each operation's timings (ours and its peers, interleaved) and the peer/ours ratios."""
    timed = _time_interleaved(case.mean_group)
    peers_of_mean = {k: v for k, v in timed.items() if not k.startswith(("ours_", "probe_"))}
    least_work = {"least_work_probe": timed["probe_sum_rows"]} if "probe_sum_rows" in timed else {}
    same_pass = {
        "same_pass_probes": {
            "add_in_place_all_cores": timed["probe_add_in_place_all_cores"],
            "read_all_cores": timed["probe_read_all_cores"],
            **{name: timed[f"probe_{name}"] for name in STREAM_PROBES},
        }
    }
    ops: dict[str, dict[str, Any]] = {
        "fedavg": {"ours": timed["ours_fedavg"], **peers_of_mean, **least_work, **same_pass},
        "fedavg_reused_output": {
            "ours": timed["ours_fedavg_reused_output"],
            **peers_of_mean,
            **least_work,
            **same_pass,
        },
        "accumulator": {"ours": timed["ours_accumulator"], **peers_of_mean, **same_pass},
        "accumulator_reused_buffer": {"ours": timed["ours_accumulator_reused_buffer"], **peers_of_mean, **same_pass},
    }
    ours_robust = {
        "coordinate_median": lambda: native.coordinate_median(case.stack),
        "trimmed_mean": lambda: native.trimmed_mean(case.stack, TRIM_BETA),
        "krum": lambda: native.krum(case.stack, KRUM_F),
    }
    for op, fn in ours_robust.items():
        ops[op] = _time_interleaved({"ours": (fn, case.repeats), **case.robust_peers[op]})
    for per_op in ops.values():
        ours_ms = per_op["ours"]["median_ms"]
        per_op["ratios_peer_over_ours"] = {
            who: round(v["median_ms"] / ours_ms, 2)
            for who, v in per_op.items()
            if who not in ("ours", "least_work_probe", "same_pass_probes")
        }
        if "least_work_probe" in per_op:
            per_op["fraction_of_least_work"] = round(per_op["least_work_probe"]["median_ms"] / ours_ms, 3)
    return ops


def evaluate_targets(name: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    lines = []
    for op, peer, minimum in TARGETS.get(name, []):
        ratio = config["operations"][op].get("ratios_peer_over_ours", {}).get(peer)
        lines.append(
            {
                "target": f"{op} >= {minimum}x {peer}",
                "ratio": ratio,
                "meets_target": ratio is not None and ratio >= minimum,
                **({} if ratio is not None else {"reason": f"peer {peer} unavailable"}),
            }
        )
    return lines


_PROBE = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np
    import native
    t_import = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((7, 1000), dtype=np.float32)
    calls = [
        ("fedavg", lambda: native.fedavg([r for r in stack], [1.0] * 7)),
        ("fedavg_stack", lambda: native.fedavg(stack, [1.0] * 7)),
        ("accumulator", lambda: (lambda a: (a.add(stack[0], 1.0), a.result()))(native.Accumulator(1000))),
        ("coordinate_median", lambda: native.coordinate_median(stack)),
        ("trimmed_mean", lambda: native.trimmed_mean(stack, 0.2)),
        ("krum", lambda: native.krum(stack, 2)),
        ("multi_krum", lambda: native.krum(stack, 2, 3)),
        ("l2_norms", lambda: native.l2_norms(stack)),
        ("clip_by_l2", lambda: native.clip_by_l2(stack[0].copy(), 1.0)),
        ("add_gaussian_noise", lambda: native.add_gaussian_noise(stack[0].copy(), 1.0, 7)),
    ]
    first = {}
    for name, fn in calls:
        t = time.perf_counter()
        fn()
        first[name] = round(time.perf_counter() - t, 4)
        if name == "fedavg":
            t_first = time.perf_counter() - t0
            first_result_epoch = time.time()
    print(json.dumps({"import_s": round(t_import, 4), "first_call_s": first,
                      "first_result_since_start_s": round(t_first, 4),
                      "first_result_epoch": first_result_epoch,
                      "all_ops_since_start_s": round(time.perf_counter() - t0, 4)}))
    """
)


def _run_probe(cache_dir: str) -> dict[str, Any]:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=str(ROOT))
    spawned = time.time()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["spawn_to_first_result_s"] = round(report.pop("first_result_epoch") - spawned, 4)
    report["process_wall_s"] = round(wall, 4)
    return report


def bench_jit() -> dict[str, Any]:
    """Compile times (empty cache) and cold start of a new process with the cache warm."""
    with tempfile.TemporaryDirectory(prefix="attestfl-numba-cache-") as cache_dir:
        cold = _run_probe(cache_dir)
        warm = _run_probe(cache_dir)
    return {
        "compile_empty_cache": cold,
        "new_process_warm_cache": warm,
        "target": "new process with warm cache reaches first result (fedavg) < 1 s, from spawn "
        "(interpreter start included)",
        "meets_target": warm["spawn_to_first_result_s"] < 1.0,
        "note": "each timed kernel in this process was called once before timing (compile or cache load excluded)",
    }


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, tracemalloc
    import numpy as np
    import native
    n, p = int(sys.argv[1]), int(sys.argv[2])
    # warm-up: the kernels, and (an update above SERIAL_MAX_VALUES) the native helper threads
    warm = native.Accumulator(1 << 17); warm.add(np.ones(1 << 17, np.float32), 1.0); warm.result()
    del warm

    def vm_hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    def vm_rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    rng = np.random.default_rng(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss0 = vm_rss()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    acc = native.Accumulator(p)
    for i in range(n):
        update = rng.standard_normal(p, dtype=np.float32)   # arrives, is added, is dropped
        acc.add(update, float(i + 1))
        del update
    result = acc.result()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    rss_peak = vm_hwm() - rss0
    one = p * 4
    print(json.dumps({"N": n, "P": p, "update_bytes": one, "tracemalloc_peak_bytes": peak,
                      "tracemalloc_peak_over_update": round(peak / one, 3),
                      "rss_peak_growth_bytes": rss_peak, "rss_peak_growth_over_update": round(rss_peak / one, 3)}))
    """
)


def bench_memory(n: int, p: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(n), str(p)], env=env, capture_output=True, text=True, check=True
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["what"] = (
        "Accumulator over N updates arriving one at a time (each generated, added, dropped); "
        "peak includes the update in flight"
    )
    report["target"] = "peak <= 3x one update"
    report["meets_target"] = (
        report["tracemalloc_peak_over_update"] <= 3.0 and report["rss_peak_growth_over_update"] <= 3.0
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats for ours, numpy and torch")
    parser.add_argument("--peer-repeats", type=int, default=None, help="timed repeats for Flower and NVFlare")
    parser.add_argument("--large-p", type=int, default=None, help="P of the N=10 configuration (default 10M)")
    parser.add_argument("--many-p", type=int, default=None, help="P of the N=100 configuration (default 1M; 0: skip)")
    parser.add_argument("--sweep-max", type=int, default=100_000_000, help="largest size of the accumulator sweep")
    parser.add_argument("--no-jit", action="store_true", help="skip the JIT/new-process section")
    args = parser.parse_args(argv)
    if args.quick:
        configs = {"large_n10": (10, 200_000), "many_n100": (100, 20_000)}
        repeats, peer_repeats, memory = 3, 1, (100, 100_000)
    else:
        configs = {"large_n10": (10, 10_000_000), "many_n100": (100, 1_000_000)}
        repeats, peer_repeats, memory = 7, 3, (100, 1_000_000)
    repeats = args.repeats or repeats
    peer_repeats = args.peer_repeats or peer_repeats
    if args.large_p:
        configs["large_n10"] = (10, args.large_p)
    if args.many_p is not None:
        if args.many_p:
            configs["many_n100"] = (100, args.many_p)
        else:
            del configs["many_n100"]
    sweep = [v for v in (10_000, 100_000, 1_000_000, 10_000_000, 100_000_000) if v <= args.sweep_max]
    if args.quick:
        sweep = [v for v in sweep if v <= 1_000_000]

    import numba

    peers = {name: _import_peer(name) for name in ("torch", "flower", "nvflare")}
    report: dict[str, Any] = {
        "benchmark": "aggregation",
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "numba_threads": numba.get_num_threads(),
            "torch_threads": peers["torch"][0][0].get_num_threads() if peers["torch"][0] is not None else None,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
        },
        "peers": {
            name: ({"available": True, "version": mod[1]} if mod is not None else {"available": False, "error": err})
            for name, (mod, err) in peers.items()
        },
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "bandwidth": bench_bandwidth(PROBE_VALUES, 3 if args.quick else 7),
        "jit": None if args.no_jit else bench_jit(),
        "configs": {},
    }
    gbps = report["bandwidth"]["best_gbps"]
    for name, (n, p) in configs.items():
        config = bench_config(n, p, repeats, peer_repeats, peers)
        add_floors(config, report["bandwidth"])
        config["targets"] = evaluate_targets(name, config)
        if name == "large_n10" and p == FLOOR_TARGET_P:
            config["floor_targets"] = evaluate_floor_targets(config)
        report["configs"][name] = config
    report["accumulator_vs_torch"] = bench_accumulator_sweep(
        sweep, 10, gbps, peers["torch"][0][0] if peers["torch"][0] is not None else None
    )
    report["accumulator_memory"] = bench_memory(*memory)
    every = [t["meets_target"] for c in report["configs"].values() for t in c["targets"] + c.get("floor_targets", [])]
    every += [report["accumulator_memory"]["meets_target"]]
    every += [report["jit"]["meets_target"]] if report["jit"] is not None else []
    every += [e.get("meets_target", False) for e in report["accumulator_vs_torch"]["sizes"].values()]
    report["all_targets_met"] = all(every)
    report["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
