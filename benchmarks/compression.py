"""Bytes on the wire and final accuracy of compressed updates against float32 (issue 19).

The demo's task (``attestfl demo``: its breast-cancer splits, model and trainer, 4 sites, 5
rounds by default) trained in one process: each site trains locally with the demo's own trainer
(``attestfl.demo:breast_cancer_trainer``), encodes its update with the wire codec
(:func:`protocol.compression.encode_update`, error feedback on), the aggregator's decoder reads
it back (:func:`protocol.compression.decode_update`) and the real round driver
(:class:`aggregator.rounds.RoundDriver`, FedAvg) aggregates it in float32. Only the transport
(attestation, sealing, gRPC) is left out: it does not change the bytes' meaning. The same
seeds for every mode, so the modes differ only by compression.

    python benchmarks/compression.py [--sites 4] [--rounds 5] [--larger]

``--larger`` adds one larger model: a 3-layer MLP (~1.1M parameters) on the same data, 3 rounds.
Prints JSON with the load average.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# This script's packages are importable once sys.path names the repository: imports after it (E402).
from aggregator.rounds import RoundDriver, TaskConfig  # noqa: E402
from attestfl.demo import breast_cancer_trainer, split_non_iid  # noqa: E402
from protocol.compression import MODES, ErrorFeedback, decode_update, encode_update  # noqa: E402
from protocol.tensors import ModelSpec  # noqa: E402


class _Quiet:
    def record(self, kind: str, **fields: Any) -> None:
        pass


def _larger_model(seed: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(30, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 2))


def federate(mode: str, sites: int, rounds: int, directory: Path, *, larger: bool = False) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    trainers = []
    for index in range(sites):
        trainer = breast_cancer_trainer({"file": f"site-{index}.npz", "seed": index}, directory)
        if larger:
            trainer.model = _larger_model(0)
        trainers.append(trainer)
    initial = {k: v.detach().numpy().astype(np.float32) for k, v in trainers[0].model.state_dict().items()}
    spec = ModelSpec.of(initial)
    driver = RoundDriver(TaskConfig(initial_model=initial, rounds=rounds, min_sites=sites), events=_Quiet())
    feedback = [ErrorFeedback() for _ in range(sites)]
    sent_bytes = 0
    accuracy: list[float] = []
    started = time.perf_counter()
    for _ in range(rounds):
        model = driver.final_model()
        for index, trainer in enumerate(trainers):
            trainer.set(model)
            weight = trainer.train(trainer.model)
            local = trainer.get()
            delta = {name: local[name] - model[name] for name in model}
            parts = encode_update(delta, {"weight": repr(float(weight))}, mode, feedback[index])
            data = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
            sent_bytes += len(data)
            tensors, _ = decode_update(data, spec, mode)
            digest = hashlib.sha256(data).digest()
            driver.accept_update(f"site-{index}", driver.round, driver.attempt, tensors, float(weight), digest, {})
        driver.close_if_complete()
        accuracy.append(_accuracy(driver.final_model(), trainers))
    return {
        "mode": mode,
        "parameters": spec.parameter_count,
        "bytes_per_update": sent_bytes // (sites * rounds),
        "wire_bytes_total": sent_bytes,
        "accuracy_per_round": [round(a, 4) for a in accuracy],
        "final_accuracy": round(accuracy[-1], 4),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _accuracy(model: dict[str, np.ndarray], trainers: list[Any]) -> float:
    """Example-weighted held-out accuracy over the sites (the demo's evaluate)."""
    correct = total = 0.0
    for trainer in trainers:
        trainer.set(model)
        metrics, examples = trainer.evaluate(trainer.model)
        correct += metrics["accuracy"] * examples
        total += examples
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--larger", action="store_true", help="also a ~1.1M-parameter MLP (3 rounds)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    report: dict[str, Any] = {"benchmark": "compression", "sites": args.sites, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="attestfl-compression-") as work:
        directory = Path(work)
        splits, _, _ = split_non_iid(args.sites)
        for index, split in enumerate(splits):
            np.savez(directory / f"site-{index}.npz", **split)
        tasks = {"demo": (args.rounds, False)}
        if args.larger:
            tasks["mlp_1m"] = (3, True)
        for task, (rounds, larger) in tasks.items():
            results = [federate(mode, args.sites, rounds, directory, larger=larger) for mode in MODES]
            base = results[0]
            for result in results:
                result["bytes_vs_float32"] = round(result["bytes_per_update"] / base["bytes_per_update"], 3)
                result["accuracy_minus_float32"] = round(result["final_accuracy"] - base["final_accuracy"], 4)
            model = "MLP 30-1024-1024-2" if larger else "attestfl.demo.make_model (30-16-2)"
            report[task] = {"model": model, "results": results}
    report["load_average_before"] = [round(v, 2) for v in load_before]
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    report["cpus"] = os.cpu_count()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
