"""Asynchronous vs synchronous rounds with one site 10x slower (issue 18): wall time to accuracy.

The demo task (scikit-learn's breast-cancer data split non-IID over 4 sites, as `attestfl
demo`), a logistic-regression model trained locally in NumPy; site 3 takes 10x longer per local
update than the others. Each mode runs against a real `attestfl serve` on loopback:

* sync: FedAvg, every round waits for all 4 sites (min_sites = 4);
* async: ``mode = "async"``, buffers of K = 2, staleness weight 1/sqrt(1+t).

Site 0 evaluates every global model it downloads on the union of the sites' held-out splits.
The target is the synchronous run's final accuracy minus 1 point; reported: each mode's final
and best accuracy, the wall time to the target, and the async/sync ratio. Prints JSON.

    python benchmarks/async.py [--rounds 8] [--delay 0.15]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from attestfl.demo import split_non_iid
from attestfl.loopback import Deployment
from protocol.tensors import ModelSpec

SITES = 4
SLOW = 3


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _accuracy(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    logits = x @ model["layers.0.weight"].T + model["layers.0.bias"]
    return float((logits.argmax(axis=1) == y).mean())


def _local_delta(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, epochs: int = 5, lr: float = 0.2) -> dict:
    w = model["layers.0.weight"].astype(np.float64).copy()
    b = model["layers.0.bias"].astype(np.float64).copy()
    target = np.eye(2)[y]
    for _ in range(epochs):
        grad = (_softmax(x @ w.T + b) - target) / len(y)
        w -= lr * grad.T @ x
        b -= lr * grad.sum(axis=0)
    return {
        "layers.0.weight": (w - model["layers.0.weight"]).astype(np.float32),
        "layers.0.bias": (b - model["layers.0.bias"]).astype(np.float32),
    }


def run_mode(mode: str, rounds: int, delay: float, directory: Path) -> dict[str, Any]:
    splits, _mean, _std = split_non_iid(SITES)
    x_test = np.concatenate([s["x_test"] for s in splits])
    y_test = np.concatenate([s["y_test"] for s in splits])
    model = {"layers.0.weight": np.zeros((2, x_test.shape[1]), np.float32), "layers.0.bias": np.zeros(2, np.float32)}
    spec = ModelSpec.of(model)
    if mode == "sync":
        task = f'rounds = {rounds}\nmin_sites = {SITES}\nround_deadline = "600s"'
    else:
        task = f'mode = "async"\nrounds = {rounds * SITES // 2}\nbuffer_size = 2\nmax_staleness = 12'
    sites = [f"site-{i}" for i in range(SITES)]
    deployment = Deployment(directory, directory / "sim", model=model, sites={s: "" for s in sites}, task=task)
    directory.mkdir(parents=True, exist_ok=True)
    aggregator = deployment.start()
    curve: list[tuple[float, int, float]] = []
    try:
        clients = [deployment.client(aggregator.target, site_id=s) for s in sites]
        for client in clients:
            client.join()
        started = time.monotonic()

        def site_loop(index: int) -> None:
            client = clients[index]
            split = splits[index]
            done = 0
            while True:
                task = client.task()
                if task.finished:
                    if index == 0:
                        final = client.download_model(task.round, spec)
                        curve.append((time.monotonic() - started, task.round, _accuracy(final, x_test, y_test)))
                    return
                if task.round == done:
                    time.sleep(0.01)
                    continue
                current = client.download_model(task.round, spec)
                if index == 0:
                    curve.append((time.monotonic() - started, task.round, _accuracy(current, x_test, y_test)))
                delta = _local_delta(current, split["x_train"], split["y_train"])
                time.sleep(delay * (10 if index == SLOW else 1))
                try:
                    client.upload_update(task.round, delta, weight=float(len(split["y_train"])), attempt=task.attempt)
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
                        raise
                done = task.round

        threads = [threading.Thread(target=site_loop, args=(i,)) for i in range(SITES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        wall = time.monotonic() - started
        for client in clients:
            client.close()
    finally:
        aggregator.stop()
    return {"curve": curve, "wall_seconds": round(wall, 3)}


def time_to(curve: list[tuple[float, int, float]], target: float) -> float | None:
    return next((round(t, 3) for t, _v, accuracy in curve if accuracy >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="synchronous rounds (async: rounds * sites / K versions)")
    parser.add_argument("--delay", type=float, default=0.15, help="a fast site's seconds per local update")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attestfl-async-") as tmp:
        sync = run_mode("sync", args.rounds, args.delay, Path(tmp) / "sync")
        asynchronous = run_mode("async", args.rounds, args.delay, Path(tmp) / "async")
    sync_final = sync["curve"][-1][2]
    target = sync_final - 0.01
    sync_time, async_time = time_to(sync["curve"], target), time_to(asynchronous["curve"], target)
    print(
        json.dumps(
            {
                "benchmark": "async",
                "sites": SITES,
                "slow_site_factor": 10,
                "fast_site_seconds_per_update": args.delay,
                "sync": {
                    "rounds": args.rounds,
                    "final_accuracy": round(sync_final, 4),
                    "best_accuracy": round(max(a for _t, _v, a in sync["curve"]), 4),
                    "wall_seconds": sync["wall_seconds"],
                    "seconds_to_target": sync_time,
                },
                "async": {
                    "versions": args.rounds * SITES // 2,
                    "buffer_size": 2,
                    "staleness_weight": "1/sqrt(1+staleness)",
                    "final_accuracy": round(asynchronous["curve"][-1][2], 4),
                    "best_accuracy": round(max(a for _t, _v, a in asynchronous["curve"]), 4),
                    "wall_seconds": asynchronous["wall_seconds"],
                    "seconds_to_target": async_time,
                },
                "target_accuracy": round(target, 4),
                "async_over_sync_time_to_target": round(async_time / sync_time, 3)
                if async_time is not None and sync_time
                else None,
                "load_average": [round(v, 2) for v in os.getloadavg()],
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
