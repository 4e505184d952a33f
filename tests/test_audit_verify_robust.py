"""`audit verify` on malformed input: every bad value in any entry or head is a Problem naming
it, never an exception; the CLI always prints its JSON with --json and exits 0 or 1 on any log
it can read; every file it reads is checked (regular file, size bound) before reading."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.audit.events import AuditLog
from aggregator.audit.log import (
    ENTRIES_FILE,
    HEADS_FILE,
    MAX_LOG_FILE_BYTES,
    AuditFileError,
    frame,
    scan_records,
)
from aggregator.audit.synthetic import SyntheticFederation
from attestation.bundle_abi import encode_bundle
from attestation.policy import MAX_POLICY_BYTES
from auditor.cli import run_head, run_prove, run_report, run_verify
from auditor.report import render_report
from auditor.show import render_text, views
from auditor.verify import UnusableLog, Verification, verify_log
from enclave.attester import make_bundle
from enclave.keys import EnclaveKeys
from enclave.simulated.attester import SimulatedTdxAttester
from protocol.admission import AdmissionPolicy, AppAttestRule, SiteRule, admission_nonce

ROOT = Path(__file__).resolve().parent.parent


def attestfl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attestfl.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def _verify_cli(log: Path, policy: Path | None, *, command: Any = run_verify, **extra: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(log_dir=str(log), policy=str(policy) if policy else None, json=True, **extra)
    code = command(args, out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small log with every entry kind the verifier checks (a DP task, a restart from a checkpoint)."""
    base = tmp_path_factory.mktemp("robust")
    fed = SyntheticFederation(base / "log", base / "sim", sites=["a", "b"])
    fed.admit("a")
    fed.admit("b")
    fed.round(1, epsilon=0.4)
    model = fed.round(2, ["a", "b"], epsilon=0.7)
    fed.restart()
    fed.log.record(
        "restart",
        resumed_round=3,
        checkpoint_model_sha256=model,
        checkpoint_created="2025-01-01T00:00:00+00:00",
        sealing="simulated",
    )
    fed.admit("a")
    fed.round(3, ["a"], epsilon=0.9)
    fed.close()
    (base / "policy.toml").write_bytes(fed.policy_text)
    result = verify_log(base / "log", fed.auditor_policy())
    assert result.valid, [str(p) for p in result.problems]
    return {"log": base / "log", "fed": fed, "policy_file": base / "policy.toml", "base": base}


def _payloads(log: Path, name: str = ENTRIES_FILE) -> list[bytes]:
    return [r.payload for r in scan_records((log / name).read_bytes()).records]


def _write(log: Path, payloads: list[bytes], name: str = ENTRIES_FILE) -> None:
    (log / name).write_bytes(b"".join(frame(p) for p in payloads))


def _checked(log: Path, policy: Any) -> Verification:
    """verify_log, the JSON and the HTML report: none may raise."""
    result = verify_log(log, policy)
    json.dumps(result.to_json())
    render_report(result)
    shown: set[str] = set()
    for view in views(result):  # audit show
        json.dumps(view)
        render_text(view, shown)
    return result


# --- admission evidence replaced, in a log the enclave signed -----------------------------------


def _record_admission(fed: SyntheticFederation, site: str, evidence: Any, evidence_format: str = "bundle") -> int:
    index = fed.log.store.size
    keys = fed.site_keys[site]
    fed.log.record(
        "admission",
        site=site,
        admitted=True,
        reasons=[],
        platform="sev-snp",
        evidence_format=evidence_format,
        evidence_sha256=hashlib.sha256(evidence if isinstance(evidence, bytes) else b"").hexdigest(),
        evidence=evidence,
        policy_id=fed.admission.policy_id,
        claims={},
        challenge=os.urandom(32),
        x25519=keys.public.x25519,
        ed25519=keys.public.ed25519,
        app_attest_key_id=b"",
        at=datetime.now(UTC).isoformat(),
    )
    return index


def test_an_admission_with_other_evidence_is_named_by_entry(tmp_path: Path) -> None:
    fed = SyntheticFederation(tmp_path / "log", tmp_path / "sim", sites=["a", "b"])
    # App Attest allowed for site b, so its garbage reaches the App Attest parser too.
    fed.admission = AdmissionPolicy(
        sites={
            "a": SiteRule(platforms=frozenset({"sev-snp"})),
            "b": SiteRule(
                platforms=frozenset({"sev-snp", "app-attest"}),
                app_attest=AppAttestRule("TEAMID.org.example", None, False),
            ),
        },
        attestation=fed.admission.attestation,
        policy_id=fed.admission.policy_id,
        policy_text=fed.admission.policy_text,
    )
    fed.restart()
    fed.admit("a")
    good = fed.log.store.size - 2
    bundle = fed.log.store  # noqa: F841 - the log stays open
    real = _payloads_of(fed, good)["fields"]["evidence"]
    tdx = encode_bundle(
        make_bundle(SimulatedTdxAttester(tmp_path / "sim"), fed.site_keys["a"], admission_nonce("a", b"c" * 32))
    )
    cases = {
        _record_admission(fed, "a", b"garbage" * 9): "admission.",
        _record_admission(fed, "a", real[: len(real) // 2]): "admission.",
        _record_admission(fed, "a", real[:7]): "admission.",
        _record_admission(fed, "a", tdx): "admission.",  # a bundle of another platform
        _record_admission(fed, "a", "not bytes"): "admission.fields",
        _record_admission(fed, "a", 1 << 70): "admission.fields",
        _record_admission(fed, "b", b"garbage", "app-attest"): "admission.",
        _record_admission(
            fed,
            "b",
            cbor2.dumps(
                {"fmt": "apple-appattest", "attStmt": {"x5c": [b"x"], "receipt": b""}, "authData": b"\x00" * 37}
            ),
            "app-attest",
        ): "admission.",
        _record_admission(fed, "b", real, "no-such-format"): "admission.",
    }
    fed.close()
    (tmp_path / "policy.toml").write_bytes(fed.policy_text)
    result = _checked(fed.log_dir, fed.auditor_policy())
    named = {(p.index, p.check) for p in result.problems}
    for index, prefix in cases.items():
        assert any(i == index and check.startswith(prefix) for i, check in named), (index, sorted(named))
    assert not any(check.startswith("head.") for _, check in named)  # the log itself is intact
    # The same verdict from inside a running event loop (App Attest verification runs its own loop).

    def in_a_running_loop() -> Verification:
        loop = asyncio.new_event_loop()

        async def call() -> Verification:
            return verify_log(fed.log_dir, fed.auditor_policy())

        try:
            return loop.run_until_complete(call())
        finally:
            loop.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        again = pool.submit(in_a_running_loop).result(timeout=120)
    assert [(p.index, p.check) for p in again.problems] == [(p.index, p.check) for p in result.problems]
    code, out, _ = _verify_cli(fed.log_dir, tmp_path / "policy.toml")
    report = json.loads(out)
    assert code == 1 and report["valid"] is False and report["first_problem"]["index"] == min(cases)
    run = attestfl("audit", "verify", str(fed.log_dir), "--policy", str(tmp_path / "policy.toml"), "--json")
    assert (
        run.returncode == 1
        and json.loads(run.stdout)["first_problem"]["index"] == min(cases)
        and "Traceback" not in run.stderr
    )


def _payloads_of(fed: SyntheticFederation, index: int) -> dict[str, Any]:
    return cbor2.loads(_payloads(fed.log_dir)[index])


# --- heads holding numbers past 64 bits ----------------------------------------------------------


@pytest.mark.parametrize(
    "name, value", [("tree_size", 1 << 64), ("timestamp", 1 << 64), ("tree_size", 1 << 200), ("timestamp", -1)]
)
def test_a_head_with_a_number_past_64_bits_is_named(
    small: dict[str, Any], tmp_path: Path, name: str, value: int
) -> None:
    log = tmp_path / "log"
    shutil.copytree(small["log"], log)
    heads = _payloads(log, HEADS_FILE)
    number = 5
    head = cbor2.loads(heads[number])
    head[name] = value
    heads[number] = cbor2.dumps(head, canonical=True)
    _write(log, heads, HEADS_FILE)
    result = _checked(log, small["fed"].auditor_policy())
    assert any(p.check == "head.decode" and p.head == number for p in result.problems), [
        str(p) for p in result.problems
    ]
    code, out, _ = _verify_cli(log, small["policy_file"])
    assert code == 1 and json.loads(out)["valid"] is False
    for command in (run_head,):
        assert command(argparse.Namespace(log_dir=str(log)), io.StringIO(), io.StringIO()) == 0


# --- every field of every entry kind, replaced by malformed values --------------------------------


def _deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


BAD_VALUES = [
    None,
    -1,
    1 << 64,
    -(1 << 70),
    1 << 200,
    float("nan"),
    float("inf"),
    1.5,
    True,
    "",
    "x" * 3,
    b"\x00",
    [],
    {},
    {"k": [1, {"x": None}]},
    {1: "int key", b"b": "bytes key"},
    cbor2.CBORTag(4242, [1]),
    _deep(300),
]


def test_every_field_of_every_entry_kind_malformed_is_a_problem(small: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "log"
    shutil.copytree(small["log"], log)
    payloads = _payloads(log)
    policy = small["fed"].auditor_policy()
    seen: dict[str, int] = {}
    for index, payload in enumerate(payloads):
        kind = cbor2.loads(payload)["kind"]
        if kind in seen and kind != "handover":
            continue
        seen[kind] = index
    assert {
        "aggregator_start",
        "handover",
        "config",
        "admission",
        "session",
        "update_accepted",
        "round",
        "restart",
        "metrics",
    } <= set(seen)
    cases = 0
    for kind, index in seen.items():
        entry = cbor2.loads(payloads[index])
        targets: list[tuple[str, ...]] = [("index",), ("kind",), ("time",), ("fields",)]
        targets += [("fields", name) for name in entry["fields"]]
        for nested in ("admission", "previous_head", "participants", "dp"):
            if isinstance(entry["fields"].get(nested), dict):
                targets += [("fields", nested, name) for name in entry["fields"][nested]]
        for number, path in enumerate(targets):
            for value in (BAD_VALUES[(number + k) % len(BAD_VALUES)] for k in range(0, len(BAD_VALUES), 3)):
                changed = cbor2.loads(payloads[index])
                holder = changed
                for step in path[:-1]:
                    holder = holder[step]
                holder[path[-1]] = value
                mutated = list(payloads)
                mutated[index] = cbor2.dumps(changed, canonical=True)
                if mutated[index] == payloads[index]:
                    continue  # the same value as logged
                _write(log, mutated)
                result = _checked(log, policy)
                assert any(p.index == index for p in result.problems), (kind, path, value)
                cases += 1
    assert cases > 300


# --- fuzzing a real log ----------------------------------------------------------------------------


CBOR_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _replace_somewhere(value: Any, draw: Any, new: Any, depth: int = 0) -> Any:
    """``value`` with one node (chosen by ``draw``) replaced by ``new``."""
    children = (
        list(value.items()) if isinstance(value, dict) else list(enumerate(value)) if isinstance(value, list) else []
    )
    if not children or depth > 6 or draw(st.integers(0, 3)) == 0:
        return new
    key, child = children[draw(st.integers(0, len(children) - 1))]
    value[key] = _replace_somewhere(child, draw, new, depth + 1)
    return value


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_logs_give_a_verdict_never_an_exception(
    small: dict[str, Any], fuzz_dir: Path, data: st.DataObject
) -> None:
    log = fuzz_dir / "log"
    if log.exists():
        shutil.rmtree(log)
    shutil.copytree(small["log"], log)
    name = data.draw(st.sampled_from([ENTRIES_FILE, HEADS_FILE]))
    raw = bytearray((log / name).read_bytes())
    mutation = data.draw(st.sampled_from(["flip", "truncate", "replace", "replace", "drop", "duplicate", "garbage"]))
    if mutation == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            position = data.draw(st.integers(0, len(raw) - 1))
            raw[position] ^= 1 << data.draw(st.integers(0, 7))
        (log / name).write_bytes(bytes(raw))
    elif mutation == "truncate":
        (log / name).write_bytes(bytes(raw[: data.draw(st.integers(1, len(raw) - 1))]))
    elif mutation == "garbage":
        position = data.draw(st.integers(0, len(raw)))
        (log / name).write_bytes(
            bytes(raw[:position]) + data.draw(st.binary(min_size=1, max_size=64)) + bytes(raw[position:])
        )
    else:
        payloads = _payloads(log, name)
        index = data.draw(st.integers(0, len(payloads) - 1))
        if mutation == "drop":
            del payloads[index]
        elif mutation == "duplicate":
            payloads.insert(data.draw(st.integers(0, len(payloads))), payloads[index])
        else:
            decoded = cbor2.loads(payloads[index])
            new = data.draw(CBOR_VALUES)
            payloads[index] = cbor2.dumps(_replace_somewhere(decoded, data.draw, new), canonical=True)
        _write(log, payloads, name)
    try:
        result = _checked(log, small["fed"].auditor_policy())
    except UnusableLog:
        assert (log / ENTRIES_FILE).stat().st_size < 40 and (
            log / HEADS_FILE
        ).stat().st_size < 40  # nothing readable left
        return
    assert isinstance(result, Verification)
    code, out, err = _verify_cli(log, small["policy_file"])
    assert code in (0, 1), err
    assert json.loads(out)["valid"] is (code == 0)


# --- files that are not regular, or too large ------------------------------------------------------


def _within(seconds: float, call: Any, *args: Any, **kwargs: Any) -> Any:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(call, *args, **kwargs).result(timeout=seconds)  # a FIFO must not block
    finally:
        pool.shutdown(wait=False)


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)


@pytest.mark.parametrize("name", [ENTRIES_FILE, HEADS_FILE])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "too-large", "directory"])
def test_log_files_that_are_not_regular_or_too_large_are_refused_naming_them(
    small: dict[str, Any], tmp_path: Path, name: str, kind: str
) -> None:
    log = tmp_path / "log"
    shutil.copytree(small["log"], log)
    target = log / name
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev-zero":
        target.symlink_to("/dev/zero")
    elif kind == "directory":
        target.mkdir()
    else:
        _sparse(target, MAX_LOG_FILE_BYTES + 1)
    code, out, err = _within(30, _verify_cli, log, small["policy_file"])
    assert code == 2 and str(target) in json.loads(out)["error"] and str(target) in err
    code, out, _ = _within(
        30, _verify_cli, log, small["policy_file"], command=run_report, output=str(tmp_path / "r.html")
    )
    assert code == 2 and str(target) in json.loads(out)["error"]
    with pytest.raises(AuditFileError, match=str(target)):
        _within(30, AuditLog, log, EnclaveKeys())


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "too-large", "missing"])
def test_policy_and_head_files_that_are_not_regular_or_too_large_are_refused_naming_them(
    small: dict[str, Any], tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "input"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "too-large":
        _sparse(path, max(MAX_POLICY_BYTES, 64 * 1024) + 1)
    code, out, err = _within(30, _verify_cli, small["log"], path)
    assert code == 2 and str(path) in json.loads(out)["error"] and "Traceback" not in err
    prove = dict(site="a", round=1, update_sha256="00" * 32, head=str(path), key=None)
    code, out, _ = _within(30, _verify_cli, small["log"], None, command=run_prove, **prove)
    assert code == 2 and str(path) in json.loads(out)["error"]


def test_a_head_file_past_64_bits_or_garbage_is_refused_by_prove(small: dict[str, Any], tmp_path: Path) -> None:
    head = verify_log(small["log"], small["fed"].auditor_policy()).heads[-1].to_json()
    for content in (
        json.dumps(dict(head, tree_size=1 << 64)),
        json.dumps(dict(head, timestamp=1 << 70)),
        "[" * 100000,
        "\xff",
        "{}",
    ):
        (tmp_path / "head.json").write_text(content, encoding="utf-8", errors="surrogateescape")
        prove = dict(site="a", round=1, update_sha256="00" * 32, head=str(tmp_path / "head.json"), key=None)
        code, out, _ = _verify_cli(small["log"], None, command=run_prove, **prove)
        assert code == 2 and "tree head file" in json.loads(out)["error"]


def test_a_random_byte_soup_is_never_a_crash(small: dict[str, Any], tmp_path: Path) -> None:
    rng = random.Random(3)
    log = tmp_path / "log"
    log.mkdir()
    for size in (1, 4, 37, 1000, 70000):
        (log / ENTRIES_FILE).write_bytes(rng.randbytes(size))
        (log / HEADS_FILE).write_bytes(rng.randbytes(size))
        code, out, _ = _verify_cli(log, small["policy_file"])
        assert code in (1, 2) and "valid" in json.loads(out)
