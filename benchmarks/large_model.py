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

``--one-site-at-a-time``: one round, the site processes one after another (each joins, downloads
the model, uploads its update and exits before the next starts: :func:`loopback_sites.run`).
For a model that N site processes cannot hold at once on this machine (1B parameters: 4 GB, each
site holds the model and its update): the aggregator still takes N updates of the whole model in
one round. ``round_seconds`` is then the first site's start to the round's log entry.

    python benchmarks/large_model.py --sites 4 --parameters 1000000000 --modes float32 --one-site-at-a-time

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


def _one_at_a_time(sites: int, parameters: int, mode: str) -> dict[str, object]:
    """One round with the site processes one after another (see the module's docstring)."""
    from loopback_sites import run

    result = run(sites, parameters, download=True, sequential=True, compression=mode)
    events = result["events"]
    uploads = [e for e in events if e["message"] == "update_accepted"]
    rounds = [e for e in events if e["message"] == "round"]
    model_bytes = next(e["bytes"] for e in events if e["message"] == "model_initial")  # as served
    timings = list(result["timings"].values())
    return {
        "mode": mode,
        "sites_one_at_a_time": True,
        "round_completed": len(rounds) == 1,
        "round_seconds": round(result["round_wall_seconds"], 3),
        "aggregator_peak_rss_bytes": result["aggregator_peak_rss_bytes"],
        "model_bytes": model_bytes,
        "wire_bytes_per_site": int(statistics.median(e["bytes"] for e in uploads)) if uploads else 0,
        "peak_rss_over_model": round(result["aggregator_peak_rss_bytes"] / model_bytes, 2),
        "download_seconds_per_site": [round(t["download_seconds"], 3) for t in timings],
        "upload_seconds_per_site": [round(t["upload_end"] - t["upload_begin"], 3) for t in timings],
        "aggregation_seconds": rounds[0]["aggregation_seconds"] if rounds else None,
        "decrypt_seconds_per_update": [e["decrypt_seconds"] for e in uploads],
        "validate_seconds_per_update": [e["validate_seconds"] for e in uploads],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--parameters", type=int, default=50_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--one-site-at-a-time", action="store_true")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if args.rounds < 2 or any(m not in MODES for m in modes):
        parser.error(f"--rounds: at least 2; --modes: a comma-separated subset of {','.join(MODES)}")
    load_before = os.getloadavg()
    results = []
    for mode in modes:
        if args.one_site_at_a_time:
            results.append(_one_at_a_time(args.sites, args.parameters, mode))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            continue
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
