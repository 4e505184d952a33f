"""attestfl against Flower, in one run, on loopback (issue 19): the same N sites, P float32
parameters and R rounds; each site its own process on both sides.

- **Flower** (the ``flwr`` package): the legacy gRPC API, ``flwr.server.start_server`` in one
  process with FedAvg (``fraction_evaluate = 0``), ``flwr.client.start_client`` in N processes.
  Plain: no attestation, no encryption.
- **attestfl**: ``attestfl serve`` (simulated TEE, :class:`attestfl.loopback.Deployment`) and N
  site processes (:class:`fedsite.client.SiteClient`): each site verifies the aggregator's
  evidence and is admitted (attestation both ways), then every round downloads the sealed model
  and uploads a sealed update (end-to-end encrypted, receipts signed, every step in the audit log).

Every site "trains" the same way on both sides: it adds a fixed random delta (drawn once) to the
model it received, so the rounds time the federation, not a trainer. A round's wall time is the
time between the aggregates of consecutive rounds (the aggregator's ``round`` log entries; Flower:
the end of ``aggregate_fit``), for rounds 2..R (round 1 includes connecting and admission).
Bytes moved per round are the application payloads both ways (models sent to the sites, updates
received); effective MB/s is that over the round's time, against loopback's own limit measured
in the same run (a plain TCP socket copy between two processes).

    python benchmarks/vs_flower.py [--sites 4] [--parameters 1000000] [--rounds 3]
    python benchmarks/vs_flower.py --sites 10 --parameters 10000000 --rounds 6 --pairs 3

With ``--pairs K`` the two federations run in turn K times and the ratio is the median of the
K pairs' ratios: on a shared machine whose speed drifts, one slow stretch moves one pair.

Prints JSON with the load average before and after.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this tree's packages, in the spawned site processes too


def _delta(site: int, parameters: int) -> np.ndarray:
    return np.random.default_rng(site).standard_normal(parameters).astype(np.float32) * 1e-3


# --- loopback's own limit -------------------------------------------------------------------


def _sink(port: Any, total: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port.value = server.getsockname()[1]
        connection, _ = server.accept()
        with connection:
            buffer = bytearray(1 << 20)
            received = 0
            while n := connection.recv_into(buffer):
                received += n
            total.value = received


def loopback_mb_per_s(megabytes: int = 512) -> float:
    """A plain TCP copy over loopback between two processes, MB/s (1 MB = 10^6 bytes)."""
    context = mp.get_context("spawn")
    port, total = context.Value("i", 0), context.Value("q", 0)
    process = context.Process(target=_sink, args=(port, total))
    process.start()
    while port.value == 0:
        time.sleep(0.01)
    chunk = memoryview(bytearray(1 << 20))
    with socket.create_connection(("127.0.0.1", port.value)) as connection:
        started = time.perf_counter()
        for _ in range(megabytes * 10**6 // len(chunk)):
            connection.sendall(chunk)
        connection.shutdown(socket.SHUT_WR)
        process.join()
        elapsed = time.perf_counter() - started
    return total.value / elapsed / 1e6


# --- Flower ---------------------------------------------------------------------------------


def _flower_server(address: str, sites: int, rounds: int, parameters: int, out: str) -> None:
    import flwr as fl
    from flwr.common import ndarrays_to_parameters

    class Timed(fl.server.strategy.FedAvg):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.ends: list[float] = []
            self.sent: list[int] = []
            self.received: list[int] = []
            self.results: list[int] = []
            self.failures: list[list[str]] = []

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            instructions = super().configure_fit(server_round, parameters, client_manager)
            self.sent.append(sum(sum(len(t) for t in fit.parameters.tensors) for _, fit in instructions))
            return instructions

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            self.received.append(sum(sum(len(t) for t in fit.parameters.tensors) for _, fit in results))
            self.results.append(len(results))
            self.failures.append(sorted({_failure(f) for f in failures}))
            aggregated = super().aggregate_fit(server_round, results, failures)
            self.ends.append(time.time())
            self.write()  # after every round: what happened survives a server that never finishes
            return aggregated

        def write(self) -> None:
            fields = ("ends", "sent", "received", "results", "failures")
            Path(out).write_text(json.dumps({"started": started, **{k: getattr(self, k) for k in fields}}))

    started = time.time()
    strategy = Timed(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=sites,
        min_available_clients=sites,
        min_evaluate_clients=0,
        initial_parameters=ndarrays_to_parameters([np.zeros(parameters, np.float32)]),
    )
    fl.server.start_server(server_address=address, config=fl.server.ServerConfig(num_rounds=rounds), strategy=strategy)
    strategy.write()


def _failure(failure: Any) -> str:
    """One line for a Flower round failure (an exception, or a client's failed result)."""
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {str(failure)[:200]}"
    return "a client returned a failed result"


def _flower_client(address: str, site: int, parameters: int) -> None:
    import flwr as fl

    delta = _delta(site, parameters)

    class Client(fl.client.NumPyClient):  # type: ignore[misc]
        def get_parameters(self, config: Any) -> list[np.ndarray]:
            return [np.zeros(parameters, np.float32)]

        def fit(self, parameters: list[np.ndarray], config: Any) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            return [parameters[0] + delta], 1, {}

    fl.client.start_client(server_address=address, client=Client().to_client(), insecure=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_flower(sites: int, parameters: int, rounds: int, timeout: float = 1800.0) -> dict[str, Any]:
    """Flower's federation; its rounds 2..R timed. A federation that fails or does not finish
    within ``timeout`` seconds (Flower's 2 GB message limit at P=600M) is reported as such:
    ``completed`` false, ``error``, and each round's results and failures as far as it got."""
    context = mp.get_context("spawn")
    address = f"127.0.0.1:{_free_port()}"
    out = Path(tempfile.mkdtemp(prefix="vs-flower-")) / "flower.json"
    server = context.Process(target=_flower_server, args=(address, sites, rounds, parameters, str(out)))
    server.start()
    time.sleep(2.0)  # start_server binds before clients connect (they retry anyway)
    clients = [context.Process(target=_flower_client, args=(address, i, parameters)) for i in range(sites)]
    for client in clients:
        client.start()
    server.join(timeout=timeout)
    error = None
    if server.is_alive():
        server.kill()
        server.join()
        error = f"did not finish {rounds} rounds within {timeout:g} s"
    elif server.exitcode != 0:
        error = f"the Flower server exited with {server.exitcode}"
    for client in clients:
        client.join(timeout=0 if error else 60)
        if client.is_alive():
            client.kill()
    result = json.loads(out.read_text()) if out.exists() else {"ends": [], "sent": [], "received": []}
    results, failures = result.get("results", []), result.get("failures", [])
    if error is None and any(n < sites for n in results):
        error = f"rounds without all {sites} results: " + "; ".join(sorted({f for round_ in failures for f in round_}))
    ends = result["ends"]
    return {
        "completed": error is None,
        "error": error,
        "results_per_round": results,
        "failures_per_round": failures,
        "round_seconds": [round(b - a, 4) for a, b in itertools.pairwise(ends)],
        "bytes_per_round": [s + r for s, r in zip(result["sent"], result["received"], strict=True)][1:],
    }


# --- attestfl -------------------------------------------------------------------------------


def _attestfl_site(
    target: str, site_id: str, index: int, sim_dir: str, roots: list[str], measurement: str, identity_path: str,
    parameters: int, poll: float,
) -> None:  # fmt: skip
    from attestation.platforms.snp import NAME as SNP
    from attestation.platforms.snp.validate import SnpPolicy
    from attestation.policy import Policy
    from attestfl.loopback import site_sealing
    from enclave.identity import load_identity
    from enclave.simulated.attester import SimulatedSnpAttester
    from fedsite.client import SiteClient
    from protocol.tensors import ModelSpec

    policy = Policy(
        trusted_simulated_roots=frozenset(roots),
        platforms=frozenset({SNP}),
        snp=SnpPolicy(measurement=frozenset({bytes.fromhex(measurement)})),
    )
    identity = load_identity(identity_path, site_sealing(Path(sim_dir)), site_id)
    delta = {"w": _delta(index, parameters)}
    with SiteClient(
        target, site_id=site_id, policy=policy, attester=SimulatedSnpAttester(sim_dir), identity=identity, timeout=600
    ) as client:
        client.join()
        done: set[tuple[int, int]] = set()
        sent: tuple[int, int] | None = None
        while True:
            task = client.task(after=sent if poll == 0 else None)  # --poll 0: long polls
            if task.finished:
                return
            if (task.round, task.attempt) in done:
                if poll or not task.waits:
                    time.sleep(poll or 0.05)
                continue
            _attestfl_round(client, task, delta, ModelSpec.from_json(task.model_spec))
            done.add((task.round, task.attempt))
            sent = (task.round, task.attempt)


def _attestfl_round(client: Any, task: Any, delta: dict[str, np.ndarray], spec: Any) -> None:
    """One round of a site: the model is local to it, as in ``fedsite.sdk`` (and as Flower's
    ``fit`` gets its parameters): a site holds one round's model at a time."""
    model = client.download_model(task.round, spec)
    np.add(model["w"], delta["w"], out=model["w"])  # the same "training" as the Flower client's (in place)
    client.upload_update(task.round, delta, weight=1, attempt=task.attempt)


def _when(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


def peak_rss_bytes(pid: int) -> int:
    """A process's peak resident set (VmHWM), bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))


def run_attestfl(
    sites: int, parameters: int, rounds: int, poll: float, *, compression: str = "float32"
) -> dict[str, Any]:
    from attestfl.loopback import Deployment
    from protocol.tensors import encode_tensor_parts

    directory = Path(tempfile.mkdtemp(prefix="vs-flower-attestfl-"))
    model = {"w": np.zeros(parameters, np.float32)}
    deployment = Deployment(
        directory,
        directory / "vendor",
        model=model,
        sites={f"site-{i}": "" for i in range(sites)},
        task=f'rounds = {rounds}\nmin_sites = {sites}\nround_deadline = "1800s"\nevaluate = false\n'
        f'compression = "{compression}"',
    )
    identities = {f"site-{i}": str(deployment.sealed_identity(f"site-{i}")) for i in range(sites)}
    aggregator = deployment.start()
    context = mp.get_context("spawn")
    processes = [
        context.Process(
            target=_attestfl_site,
            args=(
                aggregator.target,
                f"site-{i}",
                i,
                str(deployment.sim_dir),
                list(deployment.roots.values()),
                aggregator.ready["measurement"],
                identities[f"site-{i}"],
                parameters,
                poll,
            ),
        )
        for i in range(sites)
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=1800)
        failed = [p.exitcode for p in processes if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"site processes failed: {failed}; aggregator log: {aggregator.stderr_path}")
        peak = peak_rss_bytes(aggregator.process.pid)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        aggregator.stop()
    events = aggregator.events()
    ends = [_when(e) for e in events if e["message"] == "round"]
    model_bytes = sum(memoryview(part).nbytes for part in encode_tensor_parts(model))  # no copy of the model
    uploads: dict[int, int] = {}
    for entry in events:
        if entry["message"] == "update_accepted":
            uploads[entry["round"]] = uploads.get(entry["round"], 0) + entry["bytes"]
    return {
        "round_seconds": [round(b - a, 4) for a, b in itertools.pairwise(ends)],
        "bytes_per_round": [sites * model_bytes + uploads.get(r, 0) for r in range(2, rounds + 1)],
        "poll_seconds": poll,
        "model_bytes": model_bytes,
        "upload_bytes": [e["bytes"] for e in events if e["message"] == "update_accepted"],
        "aggregator_peak_rss_bytes": peak,
    }


# --- report ---------------------------------------------------------------------------------


def _summary(side: dict[str, Any], loopback: float) -> dict[str, Any]:
    seconds, moved = side["round_seconds"], side["bytes_per_round"]
    if not seconds or side.get("completed") is False:
        return {**side, "median_round_seconds": None}
    median = statistics.median(seconds)
    rate = statistics.median(b / s / 1e6 for b, s in zip(moved, seconds, strict=True))
    side = {k: v for k, v in side.items() if k not in ("upload_bytes", "model_bytes")}
    return {
        **side,
        "median_round_seconds": round(median, 4),
        "effective_mb_per_s": round(rate, 1),
        "fraction_of_loopback": round(rate / loopback, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--parameters", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--poll",
        type=float,
        default=0.0,
        help="attestfl sites' GetTask poll interval (seconds); 0 (the default): long polls, the aggregator "
        "answers when the next round opens",
    )
    parser.add_argument("--loopback-mb", type=int, default=512)
    parser.add_argument(
        "--flower-timeout", type=float, default=1800.0, help="seconds before an unfinished Flower run is stopped"
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="run Flower then attestfl this many times, in turn, and take the ratio pair by pair (the median): "
        "a machine whose speed drifts between the two federations moves one pair, not the figure",
    )
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds: at least 2 (rounds 2..R are timed)")
    if args.pairs < 1:
        parser.error("--pairs: at least 1")
    load_before = os.getloadavg()
    loopback = loopback_mb_per_s(args.loopback_mb)
    pairs = []
    for _ in range(args.pairs):
        flower = run_flower(args.sites, args.parameters, args.rounds, args.flower_timeout)
        attestfl = run_attestfl(args.sites, args.parameters, args.rounds, args.poll)
        pairs.append((flower, attestfl))
    loopback_after = loopback_mb_per_s(args.loopback_mb)
    import flwr

    fastest = max(loopback, loopback_after)
    summaries = [
        {"flower": {"version": flwr.__version__, **_summary(f, fastest)}, "attestfl": _summary(a, fastest)}
        for f, a in pairs
    ]
    ratios = []
    for pair in summaries:
        flower_median, attestfl_median = (pair[k]["median_round_seconds"] for k in ("flower", "attestfl"))
        pair["attestfl_over_flower"] = (
            round(attestfl_median / flower_median, 3) if flower_median and attestfl_median else None
        )
        if pair["attestfl_over_flower"] is not None:
            ratios.append(pair["attestfl_over_flower"])
    result = {
        "benchmark": "vs_flower",
        "sites": args.sites,
        "parameters": args.parameters,
        "rounds": args.rounds,
        "model_megabytes": round(args.parameters * 4 / 1e6, 1),
        "loopback_mb_per_s": [round(loopback, 1), round(loopback_after, 1)],
        **summaries[0],  # the first pair's figures in full (the only pair by default)
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        # the median of the pairs' ratios (None if Flower completed no pair)
        "attestfl_over_flower": round(statistics.median(ratios), 3) if ratios else None,
    }
    if args.pairs > 1:
        result["pairs"] = summaries
        result["attestfl_over_flower_per_pair"] = [pair["attestfl_over_flower"] for pair in summaries]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
