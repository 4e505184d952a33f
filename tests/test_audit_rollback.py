"""Rollback that the log can reveal (restart, round order, DP epsilon, handover heads), and
the sites' side: signed tree heads from bytes and consistency proofs from the live log."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import pytest

from aggregator.audit.events import AuditLog
from aggregator.audit.log import ENTRIES_FILE, LogStore, frame, scan_records
from aggregator.audit.synthetic import SyntheticFederation
from auditor.verify import verify_log
from enclave.keys import EnclaveKeys
from protocol.auditlog import merkle
from protocol.auditlog.heads import HeadInconsistent, HeadInvalid, TreeHead, head_message, verify_consistency

ROOT = Path(__file__).resolve().parent.parent


def _fed(tmp_path: Path, name: str = "log") -> SyntheticFederation:
    fed = SyntheticFederation(tmp_path / name, tmp_path / "sim", sites=["a", "b"])
    fed.admit("a")
    fed.admit("b")
    return fed


def _problems(fed: SyntheticFederation) -> list[tuple[int, str]]:
    fed.close()
    result = verify_log(fed.log_dir, fed.auditor_policy())
    return [(p.index, p.check) for p in result.problems]


def _restart_entry(fed: SyntheticFederation, resumed: int, model: str) -> int:
    index = fed.log.store.size
    fed.log.record(
        "restart",
        resumed_round=resumed,
        checkpoint_model_sha256=model,
        checkpoint_created="2025-01-01T00:00:00+00:00",
        sealing="simulated",
    )
    return index


def test_an_honest_restart_from_the_checkpoint_of_the_last_round_is_valid(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    fed.round(1)
    model = fed.round(2)
    fed.restart()
    _restart_entry(fed, 3, model)
    fed.admit("a")
    fed.admit("b")
    fed.round(3)
    assert _problems(fed) == []


@pytest.mark.parametrize("resumed", [1, 2])
def test_a_restart_that_resumes_behind_the_closed_rounds_is_named(tmp_path: Path, resumed: int) -> None:
    fed = _fed(tmp_path)
    models = [fed.round(1), fed.round(2)]
    fed.restart()
    index = _restart_entry(fed, resumed, models[resumed - 2] if resumed == 2 else "00" * 32)
    fed.admit("a")
    fed.admit("b")
    fed.round(resumed)  # the same round again: named once, at the restart
    problems = _problems(fed)
    assert problems == [(index, "restart.round")]


def test_a_restart_ahead_of_the_log_and_a_replaced_checkpoint_are_named(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    fed.round(1)
    fed.restart()
    ahead = _restart_entry(fed, 5, "11" * 32)  # rounds 2..4 are not in this log
    fed.restart()
    fed.admit("a")
    fed.round(5, ["a"])
    fed.restart()
    replaced = _restart_entry(fed, 6, "22" * 32)  # round 5 produced another model
    assert _problems(fed) == [(ahead, "restart.round"), (replaced, "restart.model")]


def test_a_round_closed_again_without_a_restart_is_named_unless_training_started_afresh(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    fed.round(1)
    fed.round(2)
    fed.restart()  # the sealed checkpoint is gone: the driver starts at round 1 again, no restart entry
    fed.admit("a")
    again = fed.log.store.size + 1  # after the upload entry
    fed.round(1, ["a"], metrics=False)
    fed.restart()
    fed.log.record("no_sealing", reason="this TEE has no local sealing key")  # a fresh training: allowed
    fed.admit("a")
    fed.round(1, ["a"], metrics=False)
    assert _problems(fed) == [(again, "round.order")]


def test_a_dp_epsilon_that_decreases_is_named(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    fed.round(1, epsilon=0.5)
    fed.round(2, epsilon=0.8)
    fed.restart()
    fed.admit("a")
    fed.admit("b")
    lower = fed.log.store.size + 2  # two uploads, then the round
    fed.round(3, epsilon=0.6, metrics=False)  # the accountant's state was rolled back
    fed.round(4, epsilon=0.9, metrics=False)
    assert _problems(fed) == [(lower, "dp.epsilon")]
    message = next(p.message for p in verify_log(fed.log_dir, fed.auditor_policy()).problems)
    assert "0.6" in message and "0.8" in message and "round 2" in message


def test_a_handover_naming_a_head_that_is_not_the_log_before_it_is_named(tmp_path: Path) -> None:
    fed = _fed(tmp_path)
    fed.round(1)
    fed.restart()
    fed.close()
    payloads = [r.payload for r in scan_records((fed.log_dir / ENTRIES_FILE).read_bytes()).records]
    heads = [
        TreeHead.from_map(cbor2.loads(r.payload))
        for r in scan_records((fed.log_dir / "heads.log").read_bytes()).records
    ]
    index = next(i for i, p in enumerate(payloads) if cbor2.loads(p)["kind"] == "handover")
    for previous in (
        heads[index - 4],
        TreeHead(index, heads[index - 1].root_hash, 1, *_forged(index, heads[index - 1].root_hash)),
    ):
        entry = cbor2.loads(payloads[index])
        entry["fields"]["previous_head"] = previous.to_cbor_map()
        changed = list(payloads)
        changed[index] = cbor2.dumps(entry, canonical=True)
        (fed.log_dir / ENTRIES_FILE).write_bytes(b"".join(frame(p) for p in changed))
        result = verify_log(fed.log_dir, fed.auditor_policy())
        assert (index, "handover.previous_head") in [(p.index, p.check) for p in result.problems]


def _forged(size: int, root: bytes) -> tuple[bytes, bytes]:
    """A key and a valid signature by it: a head signed by someone other than the previous run."""
    rogue = EnclaveKeys()
    return rogue.public.ed25519, rogue.sign(head_message(size, root, 1, rogue.public.ed25519))


# --- the sites' side: heads and consistency ---------------------------------------------------


def test_a_head_round_trips_through_bytes_and_refuses_what_is_not_a_signed_head(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "log", EnclaveKeys(), fsync=False)
    log.record("note", i=0)
    head = log.last_head
    assert TreeHead.from_bytes(head.to_bytes()) == head
    assert TreeHead.from_bytes(head.to_bytes(), key=log.keys.public.ed25519) == head
    with pytest.raises(HeadInvalid, match="not by"):
        TreeHead.from_bytes(head.to_bytes(), key=EnclaveKeys().public.ed25519)
    bad = head.to_cbor_map()
    bad["root_hash"] = hashlib.sha256(b"other").digest()
    with pytest.raises(HeadInvalid, match="signature"):
        TreeHead.from_bytes(cbor2.dumps(bad, canonical=True))
    for name, value in (
        ("tree_size", 1 << 64),
        ("timestamp", 1 << 64),
        ("tree_size", -1),
        ("tree_size", "1"),
        ("key", b"k"),
    ):
        with pytest.raises(HeadInvalid):
            TreeHead.from_bytes(cbor2.dumps(dict(head.to_cbor_map(), **{name: value}), canonical=True))
    for data in (b"", b"\xff", b"\x81" * 2000, cbor2.dumps([1, 2]), bytes(2000)):
        with pytest.raises(HeadInvalid):
            TreeHead.from_bytes(data)
    with pytest.raises(HeadInvalid):
        head_message(1 << 64, head.root_hash, 0, head.key)
    log.close()


def test_a_site_checks_that_each_new_head_extends_the_one_it_kept(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "log", EnclaveKeys(), fsync=False)
    kept = None
    for i in range(70):
        log.record("note", i=i)
        head = log.last_head
        if kept is not None:
            verify_consistency(kept, head, log.consistency_proof(kept.tree_size), key=log.keys.public.ed25519)
        if i % 9 == 0:
            kept = head
    # across a restart: the new run's key signs, the proof still links the kept head
    log.close()
    log = AuditLog(tmp_path / "log", EnclaveKeys(), fsync=False)
    log.record("note", i="after restart")
    verify_consistency(kept, log.last_head, log.consistency_proof(kept.tree_size), key=log.keys.public.ed25519)
    with pytest.raises(HeadInvalid):
        verify_consistency(kept, log.last_head, log.consistency_proof(kept.tree_size), key=kept.key)
    with pytest.raises(HeadInconsistent, match="rolled back"):
        verify_consistency(log.last_head, kept, [])
    with pytest.raises(HeadInconsistent):
        verify_consistency(kept, log.last_head, [hashlib.sha256(b"x").digest()] * 3)
    log.close()


def test_a_rolled_back_log_fails_the_sites_consistency_check(tmp_path: Path) -> None:
    # The host snapshots the log at 20 entries; the aggregator goes on to 30 and a site keeps
    # that head; the host restores the snapshot and the restarted aggregator appends 15 more.
    log = AuditLog(tmp_path / "log", EnclaveKeys(), fsync=False)
    for i in range(20):
        log.record("note", i=i)
    log.close()
    shutil.copytree(tmp_path / "log", tmp_path / "snapshot")
    log = AuditLog(tmp_path / "log", EnclaveKeys(), fsync=False)
    for i in range(20, 30):
        log.record("note", i=i)
    kept = log.last_head
    log.close()
    (tmp_path / "snapshot" / "lock").unlink()
    rolled = AuditLog(tmp_path / "snapshot", EnclaveKeys(), fsync=False)
    rolled.record("note", i="restarted")
    with pytest.raises(HeadInconsistent, match="fewer"):
        verify_consistency(kept, rolled.last_head, [])
    for i in range(15):
        rolled.record("note", i=f"fork {i}")
    assert rolled.last_head.tree_size > kept.tree_size
    with pytest.raises(HeadInconsistent, match="does not extend"):
        verify_consistency(kept, rolled.last_head, rolled.consistency_proof(kept.tree_size))
    rolled.close()


def test_consistency_proofs_of_the_store_match_the_definition(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "log", fsync=False)
    keys = EnclaveKeys()
    for i in range(130):
        store.append("note", i, {"i": i}, key=keys.public.ed25519, sign=keys.sign)
        n = store.size
        for old in {0, 1, n // 3, n - 1, n}:
            assert store.consistency_proof(old) == merkle.consistency_proof(old, store.leaves)
    for new in (1, 64, 77, 130):
        assert store.consistency_proof(5 if new >= 5 else 0, new) == merkle.consistency_proof(
            5 if new >= 5 else 0, store.leaves[:new]
        )
        assert store.root(new) == merkle.root(store.leaves[:new])
    for bad in ((-1, None), (131, None), (10, 5), (0, 131)):
        with pytest.raises(ValueError):
            store.consistency_proof(*bad)
    store.close()


def test_consistency_proofs_are_cheap_on_a_large_log(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "log", fsync=False)
    keys = EnclaveKeys()
    for _ in range(1 << 14):
        store.append("n", 0, {}, key=keys.public.ed25519, sign=keys.sign)
    started = time.perf_counter()
    for old in range(1, 1 << 14, 97):
        proof = store.consistency_proof(old)
        assert len(proof) <= 2 * 15
    per_proof = (time.perf_counter() - started) / len(range(1, 1 << 14, 97))
    assert per_proof < 0.005, per_proof  # O(log n) stored hashes, not a pass over the leaves
    store.close()


def test_the_heads_module_imports_nothing_of_the_aggregator() -> None:
    # attestation.errors (the error model every package shares; the standard library only) aside.
    code = (
        "import sys, protocol.auditlog.heads; "
        "bad = sorted(m for m in sys.modules if m.startswith(('enclave', 'attestation', 'numpy', 'grpc')) "
        "and m not in ('attestation', 'attestation.errors') "
        "or m.startswith('aggregator.') and m not in ('aggregator.audit', "
        "'protocol.auditlog.heads', 'protocol.auditlog.merkle')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
