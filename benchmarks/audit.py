"""Offline verification of a 10,000-entry audit log (issue 8 target: <= 10 s on the dev machine).

The log is written through the real AuditLog (one signed tree head per entry) by
:class:`aggregator.audit.synthetic.SyntheticFederation`: real simulated SEV-SNP evidence for
the aggregator and for every site admission, the real admission function, real receipt
signatures. The mix (stated in the JSON): 20 sites; every "epoch" all sites (re-)join
(admission + session) and one rogue join with debug evidence is refused; then rounds of 20
receipts, 20 metrics reports and one round entry; the aggregator restarts (handover) every
3 epochs; the remainder up to the entry count is metrics. Verification re-runs every
admission from its logged evidence (no memoisation) and appraises every start/handover
evidence bundle.

    python benchmarks/audit.py [--entries 10000] [--repeats 3] [--fsync]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.audit.synthetic import SyntheticFederation  # noqa: E402
from aggregator.audit.verify import verify_log  # noqa: E402

TARGET_SECONDS = 10.0
SITES = 20
ROUNDS_PER_EPOCH = 23


def build(directory: Path, entries: int, fsync: bool) -> SyntheticFederation:
    sites = [f"site-{i:02d}" for i in range(SITES)]
    fed = SyntheticFederation(directory / "log", directory / "sim", sites=sites, fsync=fsync)
    round_number, epoch = 0, 0
    per_round = 2 * SITES + 1
    while fed.log.store.size + 2 * SITES + 2 + per_round <= entries:
        if epoch and epoch % 3 == 0:
            fed.restart()
        for site in sites:
            fed.admit(site)
        fed.admit(sites[epoch % SITES], debug=True)  # refused: its old session stays live
        for _ in range(ROUNDS_PER_EPOCH):
            if fed.log.store.size + per_round > entries:
                break
            round_number += 1
            fed.round(round_number)
        epoch += 1
    while fed.log.store.size < entries:
        fed.log.record("metrics", site=sites[0], round=round_number, metrics={"accuracy": 0.9}, examples=100)
    fed.close()
    return fed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fsync", action="store_true", help="fsync every append while building (as the aggregator does)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attestfl-audit-bench-") as tmp:
        started = time.perf_counter()
        fed = build(Path(tmp), args.entries, args.fsync)
        build_seconds = time.perf_counter() - started
        policy = fed.auditor_policy()
        samples, result = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = verify_log(Path(tmp) / "log", policy)
            samples.append(time.perf_counter() - started)
        assert result is not None
        size = sum(p.stat().st_size for p in (Path(tmp) / "log").iterdir())
    seconds = statistics.median(samples)
    kinds = Counter(e.kind for e in result.entries)
    print(json.dumps({
        "benchmark": "attestfl audit verify (offline re-verification)",
        "entries": result.records,
        "tree_heads": len(result.heads),
        "valid": result.valid,
        "seconds": round(seconds, 3),
        "seconds_all": [round(s, 3) for s in samples],
        "entries_per_second": round(result.records / seconds, 1),
        "target_seconds": TARGET_SECONDS,
        "meets_target": result.valid and max(samples) <= TARGET_SECONDS,
        "mix": dict(sorted(kinds.items())),
        "admission_share": round(kinds["admission"] / result.records, 4),
        "admissions_re_run": len(result.admissions),
        "aggregator_evidence_appraised": len(result.runs),
        "memoised": False,
        "log_bytes": size,
        "build_seconds": round(build_seconds, 2),
        "build_fsync": args.fsync,
    }, indent=2))


if __name__ == "__main__":
    main()
