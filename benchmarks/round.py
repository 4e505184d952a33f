"""One training round, 10 sites, a 10M-parameter model, over loopback (issue 7): where the time goes.

Every site (its own process) joins — verifying the aggregator's evidence, presenting its own,
being admitted (attestation) — downloads the sealed global model, then all upload a sealed
update at once. Reported: attestation per site, model download, upload wall time (transfer),
the aggregator's decryption and validation time, and its aggregation time. Prints JSON.

    python benchmarks/round.py [--sites 10] [--parameters 10000000]
"""

from __future__ import annotations

import argparse
import json
import statistics

from loopback_sites import run


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "max": round(max(values), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--parameters", type=int, default=10_000_000)
    args = parser.parse_args()
    result = run(args.sites, args.parameters, download=True)
    timings = result["timings"].values()
    events = result["events"]
    uploads = [e for e in events if e["message"] == "update_accepted"]
    (round_event,) = [e for e in events if e["message"] == "round"]
    begin = min(t["upload_begin"] for t in timings)
    end = max(t["upload_end"] for t in timings)
    print(
        json.dumps(
            {
                "benchmark": "round",
                "sites": args.sites,
                "parameters": args.parameters,
                "model_megabytes": round(args.parameters * 4 / 1e6, 1),
                "attestation_seconds_per_site": _summary([t["attestation_seconds"] for t in timings]),
                "model_download_seconds_per_site": _summary([t["download_seconds"] for t in timings]),
                "upload_wall_seconds_all_sites": round(end - begin, 3),
                "aggregator_decryption_seconds": {
                    "total": round(sum(e["decrypt_seconds"] for e in uploads), 3),
                    "per_update_median": round(statistics.median(e["decrypt_seconds"] for e in uploads), 4),
                },
                "aggregator_validation_seconds_total": round(sum(e["validate_seconds"] for e in uploads), 3),
                "aggregation_seconds": round_event["aggregation_seconds"],
                "strategy": round_event["strategy"],
                "cpus": result["cpus"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
