"""The audit log's structure, crash safety and tamper evidence, on logs written through the
real AuditLog with real simulated evidence, admissions and receipt signatures."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.audit.events import AuditLog
from aggregator.audit.log import (
    ENTRIES_FILE,
    HEADS_FILE,
    AuditLogBusy,
    AuditLogCorrupt,
    TreeHead,
    encode_entry,
    frame,
    head_message,
    scan_records,
)
from aggregator.audit.synthetic import SyntheticFederation
from auditor.verify import verify_log
from enclave.keys import EnclaveKeys
from protocol.auditlog import merkle

ROOT = Path(__file__).resolve().parent.parent

# --- RFC 9162 Merkle tree ---------------------------------------------------------------------


def _mth(leaves: list[bytes]) -> bytes:
    """MTH exactly as RFC 9162 §2.1.1 defines it (recursive, on leaf hashes)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def test_leaf_and_node_hashes_use_the_rfc9162_prefixes() -> None:
    assert merkle.leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert merkle.node_hash(b"l" * 32, b"r" * 32) == hashlib.sha256(b"\x01" + b"l" * 32 + b"r" * 32).digest()
    assert merkle.root([]) == hashlib.sha256(b"").digest()
    # RFC 6962/9162 test vector style: a 2-leaf tree
    a, b = merkle.leaf_hash(b""), merkle.leaf_hash(b"\x00")
    assert merkle.root([a, b]) == hashlib.sha256(b"\x01" + a + b).digest()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70), st.data())
def test_proofs_verify_and_reject_against_the_definition(n: int, data: st.DataObject) -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    root = merkle.root(leaves)
    assert root == _mth(leaves)
    index = data.draw(st.integers(0, n - 1))
    path = merkle.inclusion_proof(index, leaves)
    assert merkle.verify_inclusion(leaves[index], index, n, path, root)
    assert not merkle.verify_inclusion(merkle.leaf_hash(b"other"), index, n, path, root)
    if n > 1:
        assert not merkle.verify_inclusion(leaves[index], (index + 1) % n, n, path, root)
    old = data.draw(st.integers(0, n))
    proof = merkle.consistency_proof(old, leaves)
    assert merkle.verify_consistency(old, n, _mth(leaves[:old]), root, proof)
    if 0 < old < n:
        assert not merkle.verify_consistency(old, n, merkle.leaf_hash(b"forged"), root, proof)
        assert not merkle.verify_consistency(old, n, _mth(leaves[:old]), merkle.leaf_hash(b"forged"), proof)
        if proof:
            bad = list(proof)
            bad[-1] = hashlib.sha256(bad[-1]).digest()
            assert not merkle.verify_consistency(old, n, _mth(leaves[:old]), root, bad)


# --- a realistic log, written once per module ---------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticFederation]:
    base = tmp_path_factory.mktemp("audit")
    fed = SyntheticFederation(base / "log", base / "sim", sites=["hospital-a", "hospital-b", "clinic-c"])
    for site in fed.sites:
        fed.admit(site)
    assert not fed.admit("clinic-c", debug=True)  # refused: debug evidence
    fed.round(1)
    fed.round(2, ["hospital-a", "hospital-b"])
    fed.restart()  # a new enclave: handover entry
    for site in fed.sites:
        fed.admit(site)
    fed.round(3)
    fed.close()
    return base / "log", fed


@pytest.fixture
def log(written: tuple[Path, SyntheticFederation], tmp_path: Path) -> Path:
    copy = tmp_path / "log"
    shutil.copytree(written[0], copy)
    (copy / "lock").unlink(missing_ok=True)
    return copy


@pytest.fixture
def policy(written: tuple[Path, SyntheticFederation]):  # noqa: ANN201
    return written[1].auditor_policy()


def _records(log: Path, name: str = ENTRIES_FILE) -> list[tuple[int, int]]:
    """(offset, end) of every record in the file."""
    data = (log / name).read_bytes()
    return [(r.offset, r.offset + 4 + len(r.payload) + 32) for r in scan_records(data).records]


def _rewrite(log: Path, payloads: list[bytes], name: str = ENTRIES_FILE) -> None:
    (log / name).write_bytes(b"".join(frame(p) for p in payloads))


def _payloads(log: Path, name: str = ENTRIES_FILE) -> list[bytes]:
    return [r.payload for r in scan_records((log / name).read_bytes()).records]


def test_the_written_log_verifies(log: Path, policy) -> None:  # noqa: ANN001
    result = verify_log(log, policy)
    assert result.valid, [str(p) for p in result.problems]
    kinds = [e.kind for e in result.entries]
    assert kinds[:2] == ["aggregator_start", "config"] and "handover" in kinds
    assert len(result.heads) == result.records == len(kinds)  # one signed head per acknowledged entry
    assert len(result.runs) == 2 and result.runs[0].key != result.runs[1].key
    assert sum(a.admitted for a in result.admissions) == 6 and sum(not a.admitted for a in result.admissions) == 1
    assert all(a.confirmed for a in result.admissions)
    assert [r.round for r in result.rounds] == [1, 2, 3]


def test_simulated_aggregator_evidence_fails_the_default_auditor_policy(log: Path) -> None:
    result = verify_log(log)  # default: real vendor roots only
    assert not result.valid
    assert result.first_problem.index == 0 and result.first_problem.check == "aggregator.evidence"
    handover = next(e.index for e in result.entries if e.kind == "handover")
    assert any(p.index == handover and p.check == "aggregator.evidence" for p in result.problems)


@pytest.mark.parametrize("where", ["payload", "length", "checksum"])
def test_a_one_byte_change_in_every_entry_is_named(log: Path, policy, where: str) -> None:  # noqa: ANN001
    original = (log / ENTRIES_FILE).read_bytes()
    records = _records(log)
    assert len(records) > 30
    for index, (start, end) in enumerate(records):
        offset = {"payload": start + 4 + (end - start - 36) // 2, "length": start + 2, "checksum": end - 1}[where]
        tampered = bytearray(original)
        tampered[offset] ^= 0x01
        (log / ENTRIES_FILE).write_bytes(bytes(tampered))
        result = verify_log(log, policy)
        assert not result.valid, (index, where)
        assert result.first_problem.index == index, (index, where, str(result.first_problem))


def test_a_one_byte_change_with_a_recomputed_checksum_is_named(log: Path, policy) -> None:  # noqa: ANN001
    payloads = _payloads(log)
    for index in range(len(payloads)):
        for position in (len(payloads[index]) // 3, len(payloads[index]) - 1):
            changed = list(payloads)
            changed[index] = (
                payloads[index][:position] + bytes([payloads[index][position] ^ 0x20]) + payloads[index][position + 1 :]
            )
            _rewrite(log, changed)
            result = verify_log(log, policy)
            assert not result.valid and result.first_problem.index == index, (
                index,
                position,
                str(result.first_problem),
            )


def test_a_deleted_entry_is_named(log: Path, policy) -> None:  # noqa: ANN001
    payloads = _payloads(log)
    for index in (0, 5, len(payloads) // 2, len(payloads) - 1):
        _rewrite(log, payloads[:index] + payloads[index + 1 :])
        result = verify_log(log, policy)
        assert not result.valid and result.first_problem.index == index, (index, str(result.first_problem))
        assert result.first_problem.check in ("entry.index", "entry.missing")


def test_two_swapped_entries_are_named(log: Path, policy) -> None:  # noqa: ANN001
    payloads = _payloads(log)
    for i, j in ((2, 3), (4, 20), (len(payloads) - 2, len(payloads) - 1)):
        swapped = list(payloads)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        _rewrite(log, swapped)
        result = verify_log(log, policy)
        assert not result.valid and result.first_problem.index == i and result.first_problem.check == "entry.index"


def test_a_forged_tree_head_is_named(log: Path, policy) -> None:  # noqa: ANN001
    heads = _payloads(log, HEADS_FILE)
    number = 10
    head = cbor2.loads(heads[number])
    head["root_hash"] = hashlib.sha256(b"another history").digest()
    forged = list(heads)
    forged[number] = cbor2.dumps(head, canonical=True)
    _rewrite(log, forged, HEADS_FILE)
    result = verify_log(log, policy)
    assert not result.valid
    first = result.first_problem
    assert (first.check, first.head, first.index) == ("head.signature", number, head["tree_size"] - 1)


def test_a_head_signed_by_a_key_whose_evidence_is_not_in_the_log_is_named(log: Path, policy) -> None:  # noqa: ANN001
    # The operator appends an entry of its own and signs the new head with a key it holds.
    payloads, heads = _payloads(log), _payloads(log, HEADS_FILE)
    rogue = EnclaveKeys()
    entry = encode_entry(len(payloads), "admission_revoked", 1, {"site": "hospital-a"})
    leaves = [merkle.leaf_hash(p) for p in payloads + [entry]]
    root = merkle.root(leaves)
    last = TreeHead.from_map(cbor2.loads(heads[-1]))
    timestamp = last.timestamp + 1
    signature = rogue.sign(head_message(len(leaves), root, timestamp, rogue.public.ed25519))
    head = TreeHead(len(leaves), root, timestamp, rogue.public.ed25519, signature)
    _rewrite(log, payloads + [entry])
    _rewrite(log, heads + [cbor2.dumps(head.to_cbor_map(), canonical=True)], HEADS_FILE)
    result = verify_log(log, policy)
    assert not result.valid
    assert (result.first_problem.check, result.first_problem.index) == ("head.key", len(payloads))
    # and the same rogue head over an unchanged log: every entry was fine, the head is not
    _rewrite(log, payloads)
    signature = rogue.sign(head_message(len(payloads), last.root_hash, timestamp, rogue.public.ed25519))
    _rewrite(
        log,
        heads
        + [
            cbor2.dumps(
                TreeHead(len(payloads), last.root_hash, timestamp, rogue.public.ed25519, signature).to_cbor_map(),
                canonical=True,
            )
        ],
        HEADS_FILE,
    )
    result = verify_log(log, policy)
    assert result.first_problem.check in ("head.key", "head.order")


def test_a_truncated_log_with_its_heads_kept_is_named(log: Path, policy) -> None:  # noqa: ANN001
    payloads = _payloads(log)
    _rewrite(log, payloads[:-3])
    result = verify_log(log, policy)
    assert not result.valid and result.first_problem.index == len(payloads) - 3
    assert result.first_problem.check == "entry.missing"


def test_an_admission_whose_evidence_fails_the_logged_policy_is_named(tmp_path: Path) -> None:
    fed = SyntheticFederation(tmp_path / "log", tmp_path / "sim", sites=["hospital-a", "hospital-b"])
    fed.admit("hospital-a")
    index = fed.log.store.size
    fed.admit("hospital-b", debug=True, claim_admitted=True)  # logged as admitted; the evidence is debug
    fed.round(1)
    fed.close()
    result = verify_log(tmp_path / "log", fed.auditor_policy())
    assert not result.valid
    assert (result.first_problem.index, result.first_problem.check) == (index, "admission.rerun")
    assert "allow_debug" in result.first_problem.message
    # a refusal logged as an admission is not the only lie caught: a refusal with invented reasons too
    fed2 = SyntheticFederation(tmp_path / "log2", tmp_path / "sim", sites=["hospital-a"])
    index = fed2.log.store.size
    fed2.admit("hospital-a", claim_admitted=False)
    fed2.close()
    result = verify_log(tmp_path / "log2", fed2.auditor_policy())
    assert (result.first_problem.index, result.first_problem.check) == (index, "admission.rerun")


def test_a_round_with_a_participant_never_admitted_is_named(tmp_path: Path) -> None:
    fed = SyntheticFederation(tmp_path / "log", tmp_path / "sim", sites=["hospital-a", "hospital-b"])
    fed.admit("hospital-a")
    fed.round(1, ["hospital-a", "hospital-b"])  # hospital-b uploaded without an admission in this run
    fed.close()
    result = verify_log(tmp_path / "log", fed.auditor_policy())
    checks = {p.check for p in result.problems}
    assert {"update.site", "round.participant"} <= checks


# --- crash safety ------------------------------------------------------------------------------


def _open(directory: Path) -> AuditLog:
    return AuditLog(directory, EnclaveKeys())


def test_a_torn_last_record_is_truncated_and_acknowledged_entries_kept(tmp_path: Path) -> None:
    log = _open(tmp_path / "log")
    for i in range(5):
        log.record("note", i=i)
    log.close()
    entries = (tmp_path / "log" / ENTRIES_FILE).read_bytes()
    partial = frame(encode_entry(5, "note", 0, {"i": 5, "pad": b"x" * 500}))[:300]
    (tmp_path / "log" / ENTRIES_FILE).write_bytes(entries + partial)
    heads = (tmp_path / "log" / HEADS_FILE).read_bytes()
    (tmp_path / "log" / HEADS_FILE).write_bytes(heads + b"\x00\x00")
    reopened = _open(tmp_path / "log")
    assert reopened.store.size == 5 and len(reopened.store.recovered) == 2
    assert (tmp_path / "log" / ENTRIES_FILE).read_bytes() == entries
    reopened.close()


def test_an_entry_written_without_its_head_was_not_acknowledged_and_is_dropped(tmp_path: Path) -> None:
    log = _open(tmp_path / "log")
    log.record("note", i=0)
    log.close()
    path = tmp_path / "log" / ENTRIES_FILE
    path.write_bytes(path.read_bytes() + frame(encode_entry(1, "note", 0, {"i": 1})))
    reopened = _open(tmp_path / "log")
    assert reopened.store.size == 1 and "unacknowledged" in reopened.store.recovered[0]
    reopened.close()


def test_damage_before_the_end_refuses_to_start(tmp_path: Path) -> None:
    log = _open(tmp_path / "log")
    for i in range(4):
        log.record("note", i=i)
    log.close()
    path = tmp_path / "log" / ENTRIES_FILE
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AuditLogCorrupt, match="damaged"):
        _open(tmp_path / "log")
    path.write_bytes(b"")  # every entry gone, the heads kept
    with pytest.raises(AuditLogCorrupt, match="acknowledged entries are missing"):
        _open(tmp_path / "log")


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    log = _open(tmp_path / "log")
    with pytest.raises(AuditLogBusy):
        _open(tmp_path / "log")
    log.close()
    _open(tmp_path / "log").close()


CHILD = textwrap.dedent("""
    import sys
    from enclave.keys import EnclaveKeys
    from enclave.simulated.attester import SimulatedSnpAttester
    from aggregator.audit.events import AuditLog
    log = AuditLog(sys.argv[1], EnclaveKeys())
    log.begin(SimulatedSnpAttester(sys.argv[2]), tee="simulated-snp", config_raw=b"crash test")
    i = 0
    while True:
        log.record("note", i=i, pad=bytes(200_000))
        print(i, flush=True)
        i += 1
""")


@pytest.mark.parametrize("acks", [3, 11])
def test_an_append_killed_mid_write_loses_no_acknowledged_entry(tmp_path: Path, acks: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "log"), str(tmp_path / "sim")],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    acknowledged = []
    assert child.stdout is not None
    for line in child.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) == acks:
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    reopened = _open(tmp_path / "log")
    try:
        payloads = _payloads(tmp_path / "log")
        notes = [cbor2.loads(p)["fields"]["i"] for p in payloads if cbor2.loads(p)["kind"] == "note"]
        assert notes[: len(acknowledged)] == acknowledged  # every acknowledged entry, in order
        reopened.begin(
            __import__("enclave.simulated.attester", fromlist=["x"]).SimulatedSnpAttester(tmp_path / "sim"),
            tee="simulated-snp",
            config_raw=b"crash test",
        )
        reopened.record("note", i=-1)
    finally:
        reopened.close()
    from attestation.policy import Policy
    from enclave.simulated.pki import load_or_create

    roots = frozenset(load_or_create(tmp_path / "sim").trusted_root_fingerprints().values())
    result = verify_log(tmp_path / "log", Policy(trusted_simulated_roots=roots))
    assert result.valid, [str(p) for p in result.problems]
    assert [e.kind for e in result.entries].count("handover") == 1
