"""Shared harness of benchmarks/transfer.py and benchmarks/round.py: an aggregator (`attestfl
serve`, its own process, simulated TEE) and N site processes on loopback, each joining (full
attestation both ways), then uploading a sealed update at the same moment."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _site(
    target: str,
    site_id: str,
    sim_dir: str,
    roots: list[str],
    measurement: str,
    identity_path: str,
    parameters: int,
    download: bool,
    barrier: Any,
    results: Any,
) -> None:
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
    values = np.random.default_rng(abs(hash(site_id)) % 2**32).standard_normal(parameters, dtype=np.float32)
    values *= np.float32(1e-3)  # in place: one update-sized array, whatever the model's size
    update = {"w": values}
    with SiteClient(
        target, site_id=site_id, policy=policy, attester=SimulatedSnpAttester(sim_dir), identity=identity, timeout=600
    ) as client:
        started = time.perf_counter()
        client.join()
        attestation = time.perf_counter() - started
        task = client.task()
        download_seconds = None
        if download:
            started = time.perf_counter()
            client.download_model(task.round, ModelSpec.from_json(task.model_spec))
            download_seconds = time.perf_counter() - started
        barrier.wait()
        cpu = time.process_time()
        begin = time.time()
        client.upload_update(task.round, update, weight=1)
        end = time.time()
        cpu = time.process_time() - cpu
    results[site_id] = {
        "attestation_seconds": attestation,
        "download_seconds": download_seconds,
        "upload_begin": begin,
        "upload_end": end,
        "upload_cpu_seconds": cpu,
    }


def run(
    sites: int, parameters: int, *, download: bool = False, sequential: bool = False, compression: str = "float32"
) -> dict[str, Any]:
    """Start everything, upload once from every site concurrently; return per-site timings and
    the aggregator's own events (decryption, validation and aggregation times) and peak RSS.
    ``sequential``: one site process at a time (each joins, downloads, uploads and exits before
    the next starts), for models too large for N site processes to hold at once on this machine."""
    sys.path.insert(0, str(ROOT))
    from attestfl.loopback import Deployment

    directory = Path(tempfile.mkdtemp(prefix="attestfl-bench-"))
    deployment = Deployment(
        directory,
        directory / "vendor",
        model={"w": np.zeros(parameters, np.float32)},
        sites={f"site-{i}": "" for i in range(sites)},
        task=f'rounds = 1\nmin_sites = {sites}\nround_deadline = "1800s"\ncompression = "{compression}"',
    )
    identities = {f"site-{i}": str(deployment.sealed_identity(f"site-{i}")) for i in range(sites)}
    aggregator = deployment.start()
    context = mp.get_context("spawn")
    barrier = context.Barrier(1 if sequential else sites)
    with context.Manager() as manager:
        results = manager.dict()
        processes = [
            context.Process(
                target=_site,
                args=(
                    aggregator.target,
                    f"site-{i}",
                    str(deployment.sim_dir),
                    list(deployment.roots.values()),
                    aggregator.ready["measurement"],
                    identities[f"site-{i}"],
                    parameters,
                    download,
                    barrier,
                    results,
                ),
            )
            for i in range(sites)
        ]
        try:
            cpu_before = _cpu_seconds(aggregator.process.pid)
            started = time.time()
            for process in processes:
                process.start()
                if sequential:
                    process.join(timeout=1800)
            for process in processes:
                process.join(timeout=1800)
            aggregator_cpu = _cpu_seconds(aggregator.process.pid) - cpu_before
            failed = [p.exitcode for p in processes if p.exitcode != 0]
            if failed:
                raise RuntimeError(f"site processes failed: {failed}; aggregator log: {aggregator.stderr_path}")
            # The round is aggregated and checkpointed after the last receipt: wait for its entry.
            deadline = time.time() + 1800
            while not any(e["message"] == "round" for e in aggregator.events()) and time.time() < deadline:
                time.sleep(0.2)
            round_wall = time.time() - started
            aggregator_cpu = _cpu_seconds(aggregator.process.pid) - cpu_before
            status = Path(f"/proc/{aggregator.process.pid}/status").read_text()
            peak = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
            timings = dict(results)
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
            aggregator.stop()
    events = aggregator.events()
    return {
        "timings": timings,
        "events": events,
        "directory": str(directory),
        "cpus": os.cpu_count(),
        "aggregator_cpu_seconds": aggregator_cpu,
        "aggregator_peak_rss_bytes": peak,
        "round_wall_seconds": round_wall,
        "load_average_1m": os.getloadavg()[0],
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
