"""A large model through the real aggregator, per compression mode (issue 19).

For each mode (``[task] compression``: float32, float16, bfloat16, int8): ``attestfl serve``
(simulated TEE) with a model of one float32 tensor of ``--parameters`` values, and ``--sites``
site processes (:class:`fedsite.client.SiteClient`, attested and admitted) that download each
round's sealed model and upload a sealed update encoded in the mode (error feedback on). Reported
per mode: ``round_seconds`` (the time between the aggregates of consecutive rounds, rounds
2..R), ``aggregator_peak_rss_bytes`` (VmHWM of the serve process), ``model_bytes`` (the model as
served), ``wire_bytes_per_site`` (one site's update as uploaded), and MB/s (models down and
updates up over the round's time).

    python benchmarks/large_model.py --sites 4 --parameters 50000000 [--rounds 2] [--modes int8,float32]

Prints JSON with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from vs_flower import run_attestfl  # noqa: E402

MODES = ("float32", "float16", "bfloat16", "int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--parameters", type=int, default=50_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--poll", type=float, default=0.05)
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if args.rounds < 2 or any(m not in MODES for m in modes):
        parser.error(f"--rounds: at least 2; --modes: a comma-separated subset of {','.join(MODES)}")
    load_before = os.getloadavg()
    results = []
    for mode in modes:
        run = run_attestfl(args.sites, args.parameters, args.rounds, args.poll, compression=mode)
        seconds = statistics.median(run["round_seconds"])
        wire = int(statistics.median(run["upload_bytes"]))
        moved = args.sites * (run["model_bytes"] + wire)
        results.append(
            {
                "mode": mode,
                "round_seconds": round(seconds, 3),
                "round_seconds_each": run["round_seconds"],
                "aggregator_peak_rss_bytes": run["aggregator_peak_rss_bytes"],
                "model_bytes": run["model_bytes"],
                "wire_bytes_per_site": wire,
                "peak_rss_over_model": round(run["aggregator_peak_rss_bytes"] / run["model_bytes"], 2),
                "mb_per_s": round(moved / seconds / 1e6, 1),
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "large_model",
                "sites": args.sites,
                "parameters": args.parameters,
                "rounds": args.rounds,
                "results": results,
                "cpus": os.cpu_count(),
                "load_average_before": [round(v, 2) for v in load_before],
                "load_average_after": [round(v, 2) for v in os.getloadavg()],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
