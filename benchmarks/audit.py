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

``--faults`` measures the writer instead (fsync on, in the system's temporary directory):
append latency of the current LogStore (raw descriptors, rollback bookkeeping) against the
LogStore before the fault-safety change (buffered file objects; loaded from git history,
commit ``BEFORE_COMMIT``, when the checkout has it), and the recovery after a failed append
on a log of ``--entries`` entries: the append fails for real (RLIMIT_FSIZE: EFBIG, as a full
disk's ENOSPC), then the restart reopens the log (scan, last head check, tree rebuild),
logs its handover (fresh evidence) and the first entry.

    python benchmarks/audit.py --faults [--entries 10000] [--appends 2000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# This script's packages are importable once sys.path names the repository: imports after it (E402).
from aggregator.audit.events import AuditLog  # noqa: E402
from aggregator.audit.log import ENTRIES_FILE, AuditLogUnavailable, LogStore  # noqa: E402
from aggregator.audit.synthetic import SyntheticFederation  # noqa: E402
from auditor.verify import verify_log  # noqa: E402
from enclave.keys import EnclaveKeys  # noqa: E402
from enclave.simulated.attester import SimulatedSnpAttester  # noqa: E402

BEFORE_COMMIT = "e47de04"  # the audit log before appends went through raw descriptors

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


def _receipt_fields(i: int) -> dict:
    """An entry the size of a typical update_accepted receipt."""
    return {
        "site": f"site-{i % 20:02d}",
        "round": i // 20,
        "update_sha256": os.urandom(32).hex(),
        "weight": 100.0,
        "accepted_unix_ms": int(time.time() * 1000),
        "receipt_signature": os.urandom(64).hex(),
    }


def _before_store() -> type | None:
    """The LogStore class of BEFORE_COMMIT (from git history), or None without it."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE_COMMIT}:aggregator/audit/log.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(tempfile.mkdtemp(prefix="attestfl-before-")) / "log_before.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("aggregator.audit._log_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.LogStore


def _append_latency(store_class: type, directory: Path, appends: int) -> dict:
    keys = EnclaveKeys()
    store = store_class(directory, fsync=True)
    samples = []
    for i in range(appends):
        fields = _receipt_fields(i)
        started = time.perf_counter()
        store.append("update_accepted", int(time.time() * 1000), fields, key=keys.public.ed25519, sign=keys.sign)
        samples.append(time.perf_counter() - started)
    store.close()
    samples.sort()
    return {
        "appends": appends,
        "median_ms": round(1000 * statistics.median(samples), 3),
        "p99_ms": round(1000 * samples[int(0.99 * (len(samples) - 1))], 3),
        "mean_ms": round(1000 * statistics.fmean(samples), 3),
    }


def faults(entries: int, appends: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="attestfl-audit-faults-") as tmp:
        base = Path(tmp)
        latency = {"after": _append_latency(LogStore, base / "after", appends)}
        before = _before_store()
        latency["before"] = (
            _append_latency(before, base / "before", appends) if before else "unavailable (no git history)"
        )
        # A log of `entries` entries: the aggregator's start (real simulated evidence), then receipts.
        started = time.perf_counter()
        log = AuditLog(base / "log", EnclaveKeys(), fsync=False)
        log.begin(SimulatedSnpAttester(base / "sim"), tee="simulated-snp", config_raw=b"benchmark")
        while log.store.size < entries:
            log.record("update_accepted", **_receipt_fields(log.store.size))
        log.close()
        build_seconds = time.perf_counter() - started
        log = AuditLog(base / "log", EnclaveKeys(), fsync=True)
        log.begin(SimulatedSnpAttester(base / "sim"), tee="simulated-snp", config_raw=b"benchmark")
        size = (base / "log" / ENTRIES_FILE).stat().st_size
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))  # the disk is full: the next entry does not fit
        try:
            log.record("update_accepted", **_receipt_fields(0), pad=bytes(4096))
            raise AssertionError("the append did not fail")
        except AuditLogUnavailable as exc:
            failure = str(exc)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space comes back
            signal.signal(signal.SIGXFSZ, previous)
        log.close()
        t0 = time.perf_counter()
        log = AuditLog(base / "log", EnclaveKeys(), fsync=True)
        t1 = time.perf_counter()
        log.begin(SimulatedSnpAttester(base / "sim"), tee="simulated-snp", config_raw=b"benchmark")
        t2 = time.perf_counter()
        log.record("update_accepted", **_receipt_fields(1))
        t3 = time.perf_counter()
        total = log.store.size
        log.close()
    return {
        "benchmark": "attestfl audit log: append latency and recovery after a failed append (fsync on)",
        "append_latency": latency,
        "recovery": {
            "entries": entries,
            "log_bytes": size,
            "failure": failure,
            "reopen_seconds": round(t1 - t0, 4),
            "handover_seconds": round(t2 - t1, 4),
            "first_append_seconds": round(t3 - t2, 4),
            "reopen_and_first_append_seconds": round((t1 - t0) + (t3 - t2), 4),
            "total_with_handover_seconds": round(t3 - t0, 4),
            "entries_after": total,
        },
        "build_seconds": round(build_seconds, 2),
        "tmp_filesystem": tempfile.gettempdir(),
        "loadavg": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fsync", action="store_true", help="fsync every append while building (as the aggregator does)"
    )
    parser.add_argument(
        "--faults", action="store_true", help="measure append latency and recovery after a failed append instead"
    )
    parser.add_argument("--appends", type=int, default=2000, help="appends timed per LogStore (with --faults)")
    args = parser.parse_args()
    if args.faults:
        print(json.dumps(faults(args.entries, args.appends), indent=2))
        return
    load_before = os.getloadavg()
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
    print(
        json.dumps(
            {
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
                "loadavg_before": load_before,
                "loadavg": os.getloadavg(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
