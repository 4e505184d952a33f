"""Many sites against one aggregator: admissions per second, one round's time, the aggregator's
peak RSS (issue 19).

A real ``attestfl serve`` (simulated SEV-SNP TEE, the loopback deployment of the tests) admits
``--sites`` sites, each with its own identity key and simulated TEE evidence, from
``--processes`` worker processes (forked; ``--threads`` concurrent sites each). Every site then
uploads one update of ``--parameters`` float32 values and the round closes when all have
(``min_sites`` = every site). Modest defaults for a shared machine:

    python benchmarks/many_sites.py [--sites 50] [--processes 4] [--threads 8] [--parameters 100000]
                                    [--rate-per-address 20]

Every site here comes from 127.0.0.1, one client address: the aggregator's per-address handshake
rate (``[aggregator] handshake_rate_per_ip``, default 20 calls/s, 3 calls per join) then bounds
admissions at ~7 per second, as it would for sites behind one NAT. ``--rate-per-address`` sets
it (and the burst to 4 s of it) to measure the aggregator rather than that limit.

Prints JSON with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

# This script's packages are importable once sys.path names the repository: imports after it (E402).
from attestfl.loopback import Deployment  # noqa: E402

_STATE: dict[str, Any] = {}


def _site_ids(count: int) -> list[str]:
    return [f"site-{i:04d}" for i in range(count)]


def _worker(args: tuple[list[str], int, int]) -> dict[str, Any]:
    """:func:`_sites` with any error as one picklable line (a gRPC error does not pickle)."""
    try:
        return _sites(args)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as text
        details = exc.details() if hasattr(exc, "details") else ""
        raise RuntimeError(f"{type(exc).__name__}: {details or exc}") from None


def _sites(args: tuple[list[str], int, int]) -> dict[str, Any]:
    """Join this worker's sites (``threads`` at a time), then upload one update each."""
    sites, threads, parameters = args
    deployment: Deployment = _STATE["deployment"]
    target: str = _STATE["target"]
    joined: dict[str, Any] = {}
    times: list[tuple[float, float]] = []
    # One simulated TEE and one site policy per worker process: loading the simulated vendor's
    # keys (RSA, ~0.4 s) is the test harness's cost, not a site's join; each site keeps its own
    # identity key (pinned by its admission rule).
    from enclave.simulated.attester import SimulatedSnpAttester

    attester, policy = SimulatedSnpAttester(deployment.sim_dir), deployment.site_policy()

    def join(site: str) -> None:
        client = deployment.client(target, site_id=site, attester=attester, policy=policy)
        began = time.time()
        client.join()
        times.append((began, time.time()))
        joined[site] = client

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(join, sites))
    _STATE["barrier"].wait()  # every site of every worker admitted: the round may start
    update = {"x": np.full(parameters, 0.001, np.float32)}
    uploads: list[tuple[float, float]] = []

    def upload(site: str) -> None:
        client = joined[site]
        began = time.time()
        client.upload_update(1, update, weight=1)
        uploads.append((began, time.time()))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(upload, sites))
    first = joined[sites[0]]
    deadline = time.time() + 600
    while first.task().round == 1 and time.time() < deadline:
        time.sleep(0.05)
    closed = time.time()
    for client in joined.values():
        client.close()
    return {"joins": times, "uploads": uploads, "round_closed_seen": closed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--parameters", type=int, default=100_000)
    parser.add_argument("--rate-per-address", type=float, default=20.0)
    args = parser.parse_args()
    load_before = os.getloadavg()
    sites = _site_ids(args.sites)
    with tempfile.TemporaryDirectory(prefix="attestfl-many-sites-") as work:
        directory = Path(work)
        deployment = Deployment(
            directory / "deployment",
            directory / "vendor",
            model={"x": np.zeros(args.parameters, np.float32)},
            sites=dict.fromkeys(sites, ""),
            task=f'rounds = 1\nmin_sites = {args.sites}\nround_deadline = "600s"',
            aggregator_extra=f"handshake_rate_per_ip = {args.rate_per_address}\n"
            f"handshake_burst_per_ip = {max(1, int(4 * args.rate_per_address))}",
        )
        deployment.directory.mkdir()
        aggregator = deployment.start(timeout=300)
        try:
            _STATE.update(
                deployment=deployment,
                target=aggregator.target,
                barrier=multiprocessing.get_context("fork").Barrier(args.processes),
            )
            slices = [(sites[i :: args.processes], args.threads, args.parameters) for i in range(args.processes)]
            with multiprocessing.get_context("fork").Pool(args.processes) as pool:
                results = pool.map(_worker, slices)
            status = Path(f"/proc/{aggregator.process.pid}/status").read_text()
            peak_rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
        finally:
            aggregator.stop()
    joins = [t for r in results for t in r["joins"]]
    uploads = [t for r in results for t in r["uploads"]]
    admission_window = max(end for _, end in joins) - min(start for start, _ in joins)
    round_seconds = max(r["round_closed_seen"] for r in results) - min(start for start, _ in uploads)
    report = {
        "benchmark": "many_sites",
        "sites": args.sites,
        "processes": args.processes,
        "threads_per_process": args.threads,
        "parameters": args.parameters,
        "handshake_rate_per_address": args.rate_per_address,
        "admitted": len(joins),
        "admission_seconds": round(admission_window, 3),
        "admissions_per_second": round(len(joins) / admission_window, 2),
        "join_latency_median_s": round(float(np.median([end - start for start, end in joins])), 3),
        "round_seconds": round(round_seconds, 3),
        "upload_latency_median_s": round(float(np.median([end - start for start, end in uploads])), 3),
        "aggregator_peak_rss_bytes": peak_rss,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
