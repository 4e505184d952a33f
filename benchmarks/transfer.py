"""Sealed update transfer throughput (issue 6 target: >= 250 MB/s on the 2-core dev machine).

10 sites (separate processes) each upload a 40 MB update (10M float32) at the same moment to
the aggregator (`attestfl serve`, its own process) over gRPC on loopback. Included: sealing
(AES-256-GCM) at the sites, transport, opening at the aggregator, the safetensors and
non-finite checks, and folding into the round's accumulator. Excluded: the handshake (each
site joins before the clock starts). Prints JSON.

    python benchmarks/transfer.py [--sites 10] [--megabytes 40]
"""

from __future__ import annotations

import argparse
import json
import statistics

from loopback_sites import run

TARGET_MB_PER_S = 250.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--megabytes", type=float, default=40.0)
    args = parser.parse_args()
    parameters = int(args.megabytes * 1e6 / 4)
    result = run(args.sites, parameters)
    timings = result["timings"]
    begin = min(t["upload_begin"] for t in timings.values())
    end = max(t["upload_end"] for t in timings.values())
    uploads = [e for e in result["events"] if e["message"] == "update_accepted"]
    total_bytes = sum(e["bytes"] for e in uploads)
    seconds = end - begin
    throughput = total_bytes / 1e6 / seconds
    print(
        json.dumps(
            {
                "benchmark": "transfer",
                "sites": args.sites,
                "update_megabytes": round(total_bytes / 1e6 / max(1, len(uploads)), 2),
                "total_megabytes": round(total_bytes / 1e6, 1),
                "wall_seconds": round(seconds, 3),
                "aggregate_mb_per_s": round(throughput, 1),
                "median_site_upload_seconds": round(
                    statistics.median(t["upload_end"] - t["upload_begin"] for t in timings.values()), 3
                ),
                "aggregator_decrypt_seconds_total": round(sum(e["decrypt_seconds"] for e in uploads), 3),
                "aggregator_validate_seconds_total": round(sum(e["validate_seconds"] for e in uploads), 3),
                "site_upload_cpu_seconds_total": round(sum(t["upload_cpu_seconds"] for t in timings.values()), 3),
                "aggregator_cpu_seconds_while_sites_ran": round(result["aggregator_cpu_seconds"], 3),
                "load_average_1m": round(result["load_average_1m"], 2),
                "cpus": result["cpus"],
                "target_mb_per_s": TARGET_MB_PER_S,
                "meets_target": throughput >= TARGET_MB_PER_S,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
