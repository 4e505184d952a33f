"""Vendor models of any size, against a real `attestfl serve`: a ~20 MB safetensors model streams
vendor -> aggregator (VendorUpload) and aggregator -> site (VendorFetch) in authenticated 1 MiB
chunks; a truncated or reordered stream, a model over the policy's size, an upload over the
vendor's memory budget and an upload past its deadline are refused with reasons; the model's
plaintext is never on the deployment's disk."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attestfl.loopback import read_events
from attestfl.vendor import VendorClient, VendorRefused, public_key
from federation import Deployment, run_aggregator
from fedsite.vendor_eval import EvaluationData, run_vendor_jobs
from protocol.tensors import encode_tensors
from protocol.vendor import (
    ArtefactOpener,
    ArtefactSealer,
    VendorError,
    VendorManifest,
    chunk_count,
    entry_point_digest,
    new_content_key,
    seal_key,
    submission_message,
)
from protocol.wire import federation_pb2 as pb

ENTRY = "fedsite.vendor_models:mlp"
FEATURES = 6
HIDDEN = 2236  # layers.1 is HIDDEN x HIDDEN float32: the model is ~20 MB


def _big_model(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(HIDDEN)
    return encode_tensors(
        {
            "layers.0.weight": rng.normal(size=(HIDDEN, FEATURES)).astype(np.float32),
            "layers.0.bias": np.zeros(HIDDEN, np.float32),
            "layers.1.weight": (rng.normal(size=(HIDDEN, HIDDEN)) * scale).astype(np.float32),
            "layers.1.bias": np.zeros(HIDDEN, np.float32),
            "layers.2.weight": (rng.normal(size=(2, HIDDEN)) * scale).astype(np.float32),
            "layers.2.bias": np.zeros(2, np.float32),
        }
    )


def _small_model(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_tensors(
        {
            "layers.0.weight": rng.normal(size=(2, FEATURES)).astype(np.float32),
            "layers.0.bias": rng.normal(size=2).astype(np.float32),
            "padding.0.weight": rng.normal(size=(700_000,)).astype(np.float32),  # three chunks
        }
    )


def _data(seed: int, n: int) -> EvaluationData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return EvaluationData(x, y)


def _needles(model: bytes) -> list[bytes]:
    """Slices of the model's random weights at spread offsets (any copy of the plaintext holds them)."""
    return [model[offset : offset + 64] for offset in range(len(model) // 10, len(model) - 64, len(model) // 7)]


def _scan(directories: list[Path], needles: list[bytes]) -> list[str]:
    found = []
    for directory in directories:
        for path in directory.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found += [str(path) for needle in needles if needle in data]
    return found


def _upload(
    keys: pb.EvidenceResponse, vendor_key: Ed25519PrivateKey, model: bytes, *, tamper: str = ""
) -> Iterator[pb.VendorUploadChunk]:
    """A hand-made VendorUpload stream (to truncate, reorder or stall it)."""
    manifest = VendorManifest(
        "acme", f"m-{tamper}", hashlib.sha256(model).digest(), len(model), ENTRY, entry_point_digest(ENTRY)
    ).to_bytes()
    content_key = new_content_key()
    sealer = ArtefactSealer(content_key)
    sealed = seal_key(content_key, keys.x25519)
    signature = vendor_key.sign(
        submission_message(
            manifest,
            aggregator_x25519=keys.x25519,
            aggregator_ed25519=keys.ed25519,
            sealed_key=sealed,
            header=sealer.header,
        )
    )
    submission = pb.VendorSubmission(
        manifest=manifest,
        artefact=pb.VendorArtefact(header=sealer.header, sealed_key=sealed),
        vendor_public=public_key(vendor_key),
        signature=signature,
    )
    count = chunk_count(len(model))
    chunks = [sealer.push(model[i << 20 : (i + 1) << 20], final=i == count - 1) for i in range(count)]
    messages = [pb.VendorUploadChunk(index=i, ciphertext=c) for i, c in enumerate(chunks)]
    if tamper == "truncated":
        messages = messages[:-1]
    elif tamper == "reordered":
        messages[0], messages[1] = (
            pb.VendorUploadChunk(index=0, ciphertext=chunks[1]),
            pb.VendorUploadChunk(index=1, ciphertext=chunks[0]),
        )
    yield pb.VendorUploadChunk(submission=submission)
    for number, message in enumerate(messages):
        if tamper == "stalled" and number == 1:
            time.sleep(9)
        yield message


def test_opener_refuses_truncation_reordering_and_excess() -> None:
    key = new_content_key()
    sealer = ArtefactSealer(key)
    chunks = [sealer.push(bytes([i]) * 100, final=i == 2) for i in range(3)]
    truncated = ArtefactOpener(sealer.header, key, max_bytes=300)
    for chunk in chunks[:2]:
        truncated.open(chunk)
    with pytest.raises(VendorError, match="truncated"):
        truncated.finish()
    with pytest.raises(VendorError, match="not authentic"):
        ArtefactOpener(sealer.header, key, max_bytes=300).open(chunks[1])
    with pytest.raises(VendorError, match="reordered or lost"):
        ArtefactOpener(sealer.header, key, max_bytes=300).open(chunks[0], index=1)
    after = ArtefactOpener(sealer.header, key, max_bytes=300)
    for chunk in chunks:
        after.open(chunk)
    after.finish()
    with pytest.raises(VendorError, match="after its final"):
        after.open(chunks[2])
    with pytest.raises(VendorError, match="over 150 bytes"):
        small = ArtefactOpener(sealer.header, key, max_bytes=150)
        for chunk in chunks:
            small.open(chunk)


def test_a_20_mb_model_streams_both_ways_and_never_touches_the_disk(tmp_path: Path) -> None:
    vendor_key = Ed25519PrivateKey.generate()
    task = (
        'rounds = 1\nmin_sites = 1\n[task.vendors]\nsites = ["site-a"]\nmin_examples = 5\nbootstrap = 10\n'
        "max_model_bytes = 25000000\nmemory_per_vendor = 64000000\nmemory_total = 200000000\n"
        'upload_timeout = "8s"\n'
        f'[task.vendors.keys]\nacme = "{public_key(vendor_key).hex()}"\n'
    )
    deployment = Deployment(tmp_path / "deployment", tmp_path / "sim", sites={"site-a": ""}, task=task)
    deployment.directory.mkdir()
    vendor_dir = tmp_path / "vendor"  # the vendor's own copy: not part of the deployment
    vendor_dir.mkdir()
    model = _big_model(1)
    assert 19_000_000 < len(model) < 21_000_000
    (vendor_dir / "model.safetensors").write_bytes(model)
    refusals: dict[str, grpc.RpcError | tuple[str, ...]] = {}
    for aggregator in run_aggregator(deployment):
        with VendorClient(
            aggregator.target, vendor="acme", signing_key=vendor_key, policy=deployment.site_policy()
        ) as vendor:
            started = time.monotonic()
            job = vendor.submit(vendor_dir / "model.safetensors", name="big", entry_point=ENTRY)
            upload_seconds = time.monotonic() - started
            keys = vendor.aggregator
            assert keys is not None
            # A second 20 MB model: its upload (plaintext + re-sealed copy) and the stored first
            # model are over the vendor's 64 MB memory budget.
            with pytest.raises(VendorRefused) as memory:
                vendor.submit(_big_model(2), name="big2", entry_point=ENTRY)
            refusals["memory"] = memory.value.reasons
            with pytest.raises(VendorRefused) as size:
                vendor.submit(model + b"\0" * 6_000_000, name="huge", entry_point=ENTRY)
            refusals["size"] = size.value.reasons
            small = _small_model(3)
            for tamper in ("truncated", "reordered"):
                response = vendor.stub.VendorUpload(_upload(keys, vendor_key, small, tamper=tamper), timeout=30)
                assert not response.accepted
                refusals[tamper] = tuple(response.reasons)
            with pytest.raises(grpc.RpcError) as stalled:
                vendor.stub.VendorUpload(_upload(keys, vendor_key, small, tamper="stalled"), timeout=30)
            refusals["stalled"] = stalled.value
            with deployment.client(aggregator.target, site_id="site-a") as client:
                client.join()
                assert client.task().vendor_jobs == 1
                started = time.monotonic()
                results = run_vendor_jobs(client, _data(4, 40))
                evaluate_seconds = time.monotonic() - started
            report = vendor.wait_report(job, timeout=30)
    print(json.dumps({"model_bytes": len(model), "upload_s": upload_seconds, "fetch_evaluate_s": evaluate_seconds}))
    assert results[job]["refused"] == "" and results[job]["examples"] == 40
    assert report["pooled"]["examples"] == 40
    assert [r.split(":")[0] for r in refusals["memory"]] == ["vendor.memory"]  # type: ignore[union-attr]
    assert [r.split(":")[0] for r in refusals["size"]] == ["vendor.size"]  # type: ignore[union-attr]
    assert "truncated" in refusals["truncated"][0]  # type: ignore[index]
    assert "reordered" in refusals["reordered"][0]  # type: ignore[index]
    stalled_error = refusals["stalled"]
    assert isinstance(stalled_error, grpc.RpcError)
    assert stalled_error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not finish within 8 s" in (stalled_error.details() or "")
    events = read_events(deployment.directory / "aggregator.stderr")
    kinds = [event.get("message") for event in events]
    assert kinds.count("vendor_submission") == 1
    assert "vendor.deadline" in json.dumps([e for e in events if e.get("message") == "vendor_refused"])
    assert _scan([vendor_dir], _needles(model))  # the scan finds the plaintext where it is
    assert not _scan([deployment.directory, deployment.sim_dir], _needles(model))


def test_memory_budget_bounds_each_vendor_and_all() -> None:
    from aggregator.gate import MemoryBudget, Ticket

    budget = MemoryBudget(per_holder=100, total=150)
    first = budget.reserve("acme", 80)
    assert isinstance(first, Ticket)
    assert "over its 100" in str(budget.reserve("acme", 30))
    second = budget.reserve("globex", 60)
    assert isinstance(second, Ticket)
    assert "over 150" in str(budget.reserve("initech", 20))
    first.release()
    first.release()  # once only
    assert budget.held == 60 and isinstance(budget.reserve("acme", 90), Ticket)


def test_policy_size_and_deadline_keys() -> None:
    from protocol.vendor import VendorPolicy

    base = {"keys": {"acme": "00" * 32}, "sites": ["site-a"]}
    policy = VendorPolicy.from_table({**base, "max_model_bytes": 1 << 25, "report_deadline": "30m"})
    assert policy.max_model_bytes == 1 << 25 and policy.report_deadline == 1800.0 and policy.upload_timeout == 600.0
    assert VendorPolicy.from_table(base).report_deadline is None
    with pytest.raises(VendorError) as bad:
        VendorPolicy.from_table({**base, "memory_total": 0, "report_deadline": "soon", "upload_timeout": -1})
    message = str(bad.value)
    assert "memory_total" in message and "report_deadline" in message and "upload_timeout" in message
