"""The audit log under real faults: appends that fail at each step (the kernel refuses a write
with EFBIG or ENOSPC, or an fsync with EIO), processes killed mid-append, rollbacks that
themselves fail; then space comes back and the aggregator restarts.

Faults are real: RLIMIT_FSIZE on a child process (tests/faults/audit_child.py), a seccomp
filter in the child that makes the kernel fail chosen system calls (tests/faults/seccomp.py),
and a 1 MiB tmpfs filled to the last page (mounting it needs root, as CI has)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.audit.events import AuditLog
from aggregator.audit.log import ENTRIES_FILE, HEADS_FILE, AuditLogUnavailable, scan_records
from attestation.policy import Policy
from auditor.verify import verify_log
from enclave.keys import EnclaveKeys
from enclave.simulated.attester import SimulatedSnpAttester
from enclave.simulated.pki import load_or_create

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "faults" / "audit_child.py"
MARKER = b"FAILED-APPEND-MARKER-"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A log whose heads.log is longer than its entries.log (small notes), so a file size
    limit can fall inside the next head while the next entry still fits."""
    base = tmp_path_factory.mktemp("faults")
    log = AuditLog(base / "log", EnclaveKeys(), fsync=False)
    log.begin(SimulatedSnpAttester(base / "sim"), tee="simulated-snp", config_raw=b"fault test")
    for i in range(250):
        log.record("note", i=i)
    log.close()
    return base / "log", base / "sim"


def _policy(sim: Path) -> Policy:
    return Policy(trusted_simulated_roots=frozenset(load_or_create(sim).trusted_root_fingerprints().values()))


def _copy(prepared: tuple[Path, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "log"
    shutil.copytree(prepared[0], copy)
    return copy


def _child(log: Path, sim: Path, fault: str) -> tuple[int, dict]:
    run = subprocess.run(
        [sys.executable, str(CHILD), str(log), str(sim), fault],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    report = json.loads(run.stdout) if run.stdout.strip() else {}
    assert "precondition" not in report, report
    assert "Traceback" not in run.stderr, run.stderr
    return run.returncode, report


def _sizes(log: Path) -> list[int]:
    return [(log / name).stat().st_size for name in (ENTRIES_FILE, HEADS_FILE)]


def _clean_ends(log: Path) -> list[int]:
    """Record counts of both files, asserting each ends exactly after its last whole record."""
    counts = []
    for name in (ENTRIES_FILE, HEADS_FILE):
        data = (log / name).read_bytes()
        scan = scan_records(data)
        assert scan.torn is None and scan.good_end == len(data), (name, scan.torn)
        counts.append(len(scan.records))
    return counts


def _restart(log: Path, sim: Path) -> list[str]:
    """A restart once space is back: open (recovering), handover, one more entry."""
    audit = AuditLog(log, EnclaveKeys())
    recovered = list(audit.store.recovered)
    audit.begin(SimulatedSnpAttester(sim), tee="simulated-snp", config_raw=b"fault test")
    audit.record("note", i="after the fault")
    audit.close()
    return recovered


def _assert_verifies(log: Path, sim: Path) -> None:
    result = verify_log(log, _policy(sim))
    assert result.valid, [str(p) for p in result.problems]
    assert not result.warnings, result.warnings


@pytest.mark.parametrize(
    "fault, stage, cause",
    [
        ("fsize-entry", "entry write", "EFBIG"),
        ("fsync-entry", "entry fsync", "EIO"),
        ("fsize-head", "head write", "EFBIG"),
        ("fsync-head", "head fsync", "EIO"),
    ],
)
def test_a_failed_append_rolls_back_to_the_last_good_record_and_fails_stop(
    prepared: tuple[Path, Path], tmp_path: Path, fault: str, stage: str, cause: str
) -> None:
    log, sim = _copy(prepared, tmp_path), prepared[1]
    code, report = _child(log, sim, fault)
    assert code == 0
    assert report["failed"].startswith("AuditLogUnavailable: ") and f"{stage} failed ({cause}" in report["failed"]
    assert "rolled back to the previous entry" in report["failed"]
    assert report["during"] == report["before"] == report["closed"]  # exactly the last good record, also after close
    assert (
        report["again"].startswith("AuditLogUnavailable: ")
        and "refuses appends until it is reopened" in report["again"]
    )
    assert report["after_space"].startswith("AuditLogUnavailable: ")  # space back: still refused until reopened
    assert report["available"] is False and report["audit_failed"]
    entries, heads = _clean_ends(log)
    assert entries == heads
    assert MARKER not in (log / ENTRIES_FILE).read_bytes()  # the failed bytes never reached the file
    _assert_verifies(log, sim)  # as left by the failure
    assert _restart(log, sim) == []  # nothing to recover: the rollback was complete
    assert _clean_ends(log) == [entries + 3, heads + 3]
    _assert_verifies(log, sim)


@pytest.mark.parametrize(
    "fault, recovered",
    [
        ("kill-entry", ["entries.log: truncated a torn last record"]),
        ("kill-before-head", ["entries.log: dropped 1 unacknowledged entries"]),
        ("kill-head", ["heads.log: truncated a torn last record", "entries.log: dropped 1 unacknowledged entries"]),
    ],
)
def test_a_process_killed_mid_append_leaves_a_tail_that_the_next_open_recovers(
    prepared: tuple[Path, Path], tmp_path: Path, fault: str, recovered: list[str]
) -> None:
    # SIGXFSZ kills the process inside the write: no rollback runs (as if truncation failed).
    log, sim = _copy(prepared, tmp_path), prepared[1]
    code, _ = _child(log, sim, fault)
    assert code == -signal.SIGXFSZ
    assert MARKER in (log / ENTRIES_FILE).read_bytes()[-4096:] or fault == "kill-entry"
    notes = _restart(log, sim)
    assert len(notes) == len(recovered) and all(n.startswith(r) for n, r in zip(notes, recovered, strict=True)), notes
    assert MARKER not in (log / ENTRIES_FILE).read_bytes()
    _clean_ends(log)
    _assert_verifies(log, sim)


def test_when_the_rollback_cannot_be_made_durable_the_next_open_recovers(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    # Every fsync fails: the entry's fsync, then the fsync of its truncation (twice).
    log, sim = _copy(prepared, tmp_path), prepared[1]
    code, report = _child(log, sim, "fsync-all")
    assert code == 0 and "entry fsync failed (EIO" in report["failed"] and "rollback incomplete" in report["failed"]
    assert report["again"].startswith("AuditLogUnavailable: ") and report["after_space"].startswith(
        "AuditLogUnavailable: "
    )
    assert report["closed"] == report["before"]
    _restart(log, sim)
    _assert_verifies(log, sim)


def test_the_double_fault_keeps_a_consistent_log(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    # The head's fsync fails and no truncation is possible: entry and head stay, whole. The log
    # is consistent (the entry is acknowledged by its head) though the append raised.
    log, sim = _copy(prepared, tmp_path), prepared[1]
    code, report = _child(log, sim, "no-rollback")
    assert code == 0 and "head fsync failed (EIO" in report["failed"] and "rollback incomplete" in report["failed"]
    assert report["again"].startswith("AuditLogUnavailable: ") and report["after_space"].startswith(
        "AuditLogUnavailable: "
    )
    assert report["closed"][0] > report["before"][0] and report["closed"][1] > report["before"][1]
    entries, heads = _clean_ends(log)  # no torn record anywhere, no append after the failure
    assert entries == heads
    assert _restart(log, sim) == []
    _assert_verifies(log, sim)


# --- a real full file system ---------------------------------------------------------------------


PAGE = os.sysconf("SC_PAGE_SIZE")


def _slack(size: int) -> int:
    """Bytes that still fit in the file's last page (tmpfs allocates whole pages)."""
    return -size % PAGE


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for chunk in (PAGE, 1):
            while True:
                try:
                    handle.write(b"\xff" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    return filler


@pytest.fixture
def small_fs(tmp_path: Path):  # noqa: ANN201
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "attestfl-audit-test", str(mount)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True, capture_output=True, timeout=30)


def test_a_full_disk_then_space_coming_back(small_fs: Path, tmp_path: Path) -> None:
    log_dir, sim = small_fs / "log", tmp_path / "sim"
    audit = AuditLog(log_dir, EnclaveKeys())
    audit.begin(SimulatedSnpAttester(sim), tee="simulated-snp", config_raw=b"full disk")
    # Steer both files' ends: the next small entry fits in entries.log's last page, its head
    # does not fit in heads.log's: with the file system full, the head write fails (ENOSPC).
    rng = random.Random(7)
    for _ in range(3000):
        entries_end, heads_end = _sizes(log_dir)
        if _slack(heads_end) < 150 and _slack(entries_end) >= 600:
            break
        audit.record("note", pad=bytes(rng.randrange(0, 3000)))
    else:
        pytest.fail("could not steer the file ends")
    filler = _fill(small_fs)
    before = _sizes(log_dir)
    with pytest.raises(AuditLogUnavailable, match=r"head write failed \(ENOSPC"):
        audit.record("note", marker=MARKER)
    assert _sizes(log_dir) == before
    with pytest.raises(AuditLogUnavailable, match="refuses appends until it is reopened"):
        audit.record("note", i=1)
    filler.unlink()  # space comes back
    with pytest.raises(AuditLogUnavailable, match="refuses appends until it is reopened"):
        audit.record("note", i=2)
    audit.close()
    assert _sizes(log_dir) == before and MARKER not in (log_dir / ENTRIES_FILE).read_bytes()
    _clean_ends(log_dir)
    assert _restart(log_dir, sim) == []
    _assert_verifies(log_dir, sim)

    # The disk fills again; now the entry itself does not fit.
    audit = AuditLog(log_dir, EnclaveKeys())
    audit.begin(SimulatedSnpAttester(sim), tee="simulated-snp", config_raw=b"full disk")
    filler = _fill(small_fs)
    before = _sizes(log_dir)
    with pytest.raises(AuditLogUnavailable, match=r"entry write failed \(ENOSPC"):
        audit.record("note", marker=MARKER * 400)
    assert _sizes(log_dir) == before
    filler.unlink()
    with pytest.raises(AuditLogUnavailable):
        audit.record("note", i=3)
    audit.close()
    assert MARKER not in (log_dir / ENTRIES_FILE).read_bytes()
    assert _restart(log_dir, sim) == []
    _clean_ends(log_dir)
    _assert_verifies(log_dir, sim)
