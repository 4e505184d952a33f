"""Contributor value's cost per round against the round's aggregation (issue 17). Prints JSON.

    python benchmarks/contribution.py            # N=10 sites, P=1M and 10M parameters
    python benchmarks/contribution.py --quick    # N=10, P=100k

Timed, as the round driver runs them (median of ``--repeat`` runs, after a warm-up):

* ``aggregation_ms``: FedAvg of N updates of P float32 (the strategy's begin_round, N adds,
  close), what the ``round`` entry's ``aggregation_seconds`` reports;
* ``observe_ms``: the surveillance's per-update statistics for all N (norm, sampled coordinates);
* ``contribution_ms``: the consensus Shapley estimate (aggregator/contribution.py, distance
  utility, 64 permutations) on a sample of 16,384 coordinates ([task.contribution]'s default)
  and of 65,536.

``ratio`` = (observe + contribution) / aggregation; the issue's target is <= 2 at N=10.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# This script's packages are importable once sys.path names the repository: imports after it (E402).
from aggregator import contribution  # noqa: E402
from aggregator.strategies import Privacy, make_strategy  # noqa: E402
from aggregator.surveillance import ContributionPolicy, Surveillance  # noqa: E402


def _median_ms(run: Any, repeat: int) -> float:
    run()  # warm-up (JIT, caches)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def measure(sites: int, size: int, repeat: int, sample: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=size).astype(np.float32)
    updates = {f"site-{i}": truth + rng.normal(size=size).astype(np.float32) for i in range(sites)}
    weights = {site: float(100 + i) for i, site in enumerate(updates)}
    strategy = make_strategy("fedavg")

    def aggregate() -> None:
        aggregation = strategy.begin_round(size)
        for index, (site, update) in enumerate(updates.items()):
            aggregation.add(update, weights[site], index)
        aggregation.close(Privacy(0))

    surveillance = Surveillance(size, None, ContributionPolicy(sample=sample))

    def observe() -> None:
        surveillance.begin(1, 1)
        for site, update in updates.items():
            surveillance.observe(site, update, weights[site])

    observe()
    assert surveillance._round is not None
    samples = dict(surveillance._round.samples)

    def estimate() -> None:
        contribution.estimate(samples, weights, rng=np.random.default_rng(1), sample=sample, utility="distance")

    aggregation_ms = _median_ms(aggregate, repeat)
    observe_ms = _median_ms(observe, repeat)
    contribution_ms = _median_ms(estimate, repeat)
    return {
        "sites": sites,
        "parameters": size,
        "sample": sample,
        "aggregation_ms": round(aggregation_ms, 3),
        "observe_ms": round(observe_ms, 3),
        "contribution_ms": round(contribution_ms, 3),
        "ratio": round((observe_ms + contribution_ms) / aggregation_ms, 3),
        "target_ratio": 2.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sizes = [100_000] if args.quick else [1_000_000, 10_000_000]
    results = [measure(10, size, args.repeat, sample) for size in sizes for sample in (16_384, 65_536)]
    print(
        json.dumps(
            {
                "benchmark": "contribution",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
