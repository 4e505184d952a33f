"""Child process of the audit log fault tests: continue a log (handover), make one append
fail for real, and report what the log did, as one JSON line on stdout.

    python tests/faults/audit_child.py LOGDIR SIMDIR FAULT

FAULT is one of:
  fsize-entry, fsize-head   RLIMIT_FSIZE just past the end of entries.log / heads.log,
                            SIGXFSZ ignored: the write is cut short, then fails with EFBIG
  kill-entry, kill-head     the same limit with SIGXFSZ's default action: the process dies
                            mid-append (torn entry / whole entry and torn head), no rollback
  kill-before-head          limit exactly at the end of heads.log: dies with the entry whole
                            and no byte of its head
  fsync-entry, fsync-head   the kernel fails fsync on that file's descriptor with EIO
  fsync-all                 every fsync fails (the rollback cannot make its truncation durable)
  no-rollback               the head's fsync fails, and so does every ftruncate: nothing can
                            be undone (the entry and its head stay: the double fault)
After the failed append it tries another (must be refused), lifts the file size limit
("space comes back"), tries again (still refused), closes the log and reports file sizes.
"""

from __future__ import annotations

import errno
import json
import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aggregator.audit.events import AuditLog
from aggregator.audit.log import ENTRIES_FILE, HEADS_FILE
from enclave.keys import EnclaveKeys
from enclave.simulated.attester import SimulatedSnpAttester
from seccomp import fail_syscalls, fd_of

MARKER = b"FAILED-APPEND-MARKER-"
OFFSET = 10  # bytes of the record that fit under the limit


def sizes(log_dir: Path) -> list[int]:
    return [(log_dir / name).stat().st_size for name in (ENTRIES_FILE, HEADS_FILE)]


def attempt(log: AuditLog, **fields: object) -> str | None:
    try:
        log.record("note", **fields)
    except Exception as exc:  # noqa: BLE001 - reported to the parent by type
        return f"{type(exc).__name__}: {exc}"
    return None


def main() -> None:
    log_dir, sim_dir, fault = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    log = AuditLog(log_dir, EnclaveKeys(), fsync=True)
    log.begin(SimulatedSnpAttester(sim_dir), tee="simulated-snp", config_raw=b"fault test")
    log.record("note", i=0)
    before = sizes(log_dir)
    entries_end, heads_end = before
    entry_bytes = 4 + 32 + 200 + len(MARKER) * 8  # an upper bound of the failing entry's record
    if fault.endswith("head") and not entries_end + entry_bytes <= heads_end:
        print(
            json.dumps(
                {
                    "precondition": f"heads.log ({heads_end}) must be longer than "
                    f"entries.log ({entries_end}) + {entry_bytes}"
                }
            )
        )
        return
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if fault.startswith(("fsize", "kill")):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN if fault.startswith("fsize") else signal.SIG_DFL)
        target = {"entry": entries_end + OFFSET, "head": heads_end + OFFSET, "before-head": heads_end}[
            fault.split("-", 1)[1]
        ]
        resource.setrlimit(resource.RLIMIT_FSIZE, (target, hard))
    elif fault == "fsync-entry":
        fail_syscalls([("fsync", fd_of(log_dir / ENTRIES_FILE), errno.EIO)])
    elif fault == "fsync-head":
        fail_syscalls([("fsync", fd_of(log_dir / HEADS_FILE), errno.EIO)])
    elif fault == "fsync-all":
        fail_syscalls([("fsync", None, errno.EIO), ("fdatasync", None, errno.EIO)])
    elif fault == "no-rollback":
        fail_syscalls([("fsync", fd_of(log_dir / HEADS_FILE), errno.EIO), ("ftruncate", None, errno.EIO)])
    else:
        raise SystemExit(f"unknown fault {fault}")
    failed = attempt(log, i=1, marker=MARKER * 8)
    during = sizes(log_dir)
    again = attempt(log, i=2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space comes back
    after_space = attempt(log, i=3)
    available = log.available
    log.close()
    print(
        json.dumps(
            {
                "before": before,
                "failed": failed,
                "during": during,
                "again": again,
                "after_space": after_space,
                "available": available,
                "closed": sizes(log_dir),
                "audit_failed": log.failed,
            }
        )
    )


if __name__ == "__main__":
    main()
