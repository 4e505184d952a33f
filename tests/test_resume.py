"""Resumable transfers against a real `attestfl serve`: a connection cut mid-upload (a proxy that
drops it, or the site cancelling its call) resumes at the last authenticated chunk; the
aggregator receives every chunk once; replayed, foreign and truncated resumes are refused
with their reasons; a resume after the retention window starts over; a download resumes."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from auditor.verify import verify_log
from federation import Aggregator, Deployment, run_aggregator
from fedsite.client import SiteClient
from fedsite.resume import SentStream, _where, resume_upload
from forwarder import Forwarder
from protocol.resume import resume_token
from protocol.streams import TAG_BYTES, StreamHeader
from protocol.tensors import ModelSpec, encode_tensors
from protocol.wire import federation_pb2 as pb
from protocol.wire.chunks import Chunk

PARAMETERS = 1_250_000  # 5 MB of float32: five 1 MiB chunks
MODEL = {"w": np.linspace(-1, 1, PARAMETERS, dtype=np.float32)}
RETENTION = 3.0  # the aggregator's stall_timeout: how long a dropped upload stays parked


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CuttingProxy(Forwarder):
    """A TCP proxy to the aggregator that, once armed, drops the connection (both sockets) after
    ``after`` more bytes went one way ("up": site -> aggregator, "down": aggregator -> site)."""

    def __init__(self, target_port: int) -> None:
        self.armed: dict[str, int] = {}
        self.cuts = 0
        super().__init__(target_port)

    def arm(self, direction: str, after: int) -> None:
        with self.lock:
            self.armed = {direction: after}

    def passes(self, direction: str, data: bytes) -> bool:
        with self.lock:
            left = self.armed.get(direction)
            if left is None:
                return True
            if len(data) >= left:
                self.armed = {}
                self.cuts += 1
                return False
            self.armed[direction] = left - len(data)
            return True


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return _free_port()


@pytest.fixture(scope="module", params=["in-memory", "spooled"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, metrics_port: int
) -> Deployment:
    """Each test twice: uploads received in memory, and spooled to disk (aggregator/spool.py) as
    every update larger than ``upload_memory_bytes`` is."""
    sites = {f"site-{name}": "" for name in "abcdefg"}
    spooled = "upload_memory_bytes = 1048576\n" if request.param == "spooled" else ""
    return Deployment(
        tmp_path_factory.mktemp("deployment"),
        tmp_path_factory.mktemp("simulated-vendor"),
        model=dict(MODEL),
        sites=sites,
        task=f'rounds = 3\nmin_sites = {len(sites)}\nround_deadline = "600s"',
        aggregator_extra=spooled + f'stall_timeout = "{RETENTION:g}s"\nmetrics_listen = "127.0.0.1:{metrics_port}"',
    )


@pytest.fixture(scope="module")
def aggregator(deployment: Deployment) -> Iterator[Aggregator]:
    yield from run_aggregator(deployment)


@pytest.fixture(scope="module")
def proxy(aggregator: Aggregator) -> Iterator[CuttingProxy]:
    forward = CuttingProxy(int(aggregator.ready["port"]))
    yield forward
    forward.close()


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "_total "):
                return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


def events(aggregator: Aggregator, kind: str, site: str) -> list[dict]:
    return [e for e in aggregator.events() if e["message"] == kind and e.get("site") == site]


def joined(deployment: Deployment, target: str, site_id: str) -> tuple[SiteClient, int, ModelSpec]:
    client = deployment.client(target, site_id=site_id, timeout=60)
    client.join()
    task = client.task()
    return client, int(task.round), ModelSpec.from_json(task.model_spec)


def update(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(PARAMETERS, value, np.float32)}


def stream_bytes(parts: list) -> tuple[int, int]:
    """(chunks, sealed bytes) of the stream of ``parts`` (1 MiB chunks, a 16-byte tag each)."""
    size = sum(len(memoryview(p).cast("B")) for p in parts)
    chunks = -(-size // (1024 * 1024))
    return chunks, size + chunks * TAG_BYTES


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def park_upload(
    aggregator: Aggregator, client: SiteClient, round_number: int, value: float, sent: int, metrics_port: int
) -> tuple[list[Chunk], bytes, list]:
    """Send ``sent`` chunks of an update, then cancel the call (a client-side cut): the
    aggregator parks the upload. Returns the stream's chunks, its id and its parts."""
    _session, call, metadata = client._next_call()
    parts = client.encode_update(update(value), 1.0)
    chunks = list(client.sealed_update(round_number, 1, call, {}, 1.0, parts))
    release = threading.Event()

    def some() -> Iterator[Chunk]:
        yield from chunks[:sent]
        release.wait(30)

    parked_before = len(events(aggregator, "upload_parked", client.site_id))
    received = metric(metrics_port, "attestfl_bytes_received")
    future = client.stub.UploadUpdate.future(some(), metadata=metadata, timeout=60)
    arrived = received + sum(len(c.ciphertext) for c in chunks[:sent])
    wait_for(lambda: metric(metrics_port, "attestfl_bytes_received") >= arrived, 30)  # the sent chunks arrived
    future.cancel()
    release.set()
    wait_for(lambda: len(events(aggregator, "upload_parked", client.site_id)) > parked_before)
    return chunks, StreamHeader.decode(chunks[0].header).stream_id, parts


def resume_call(client: SiteClient, stream_id: bytes, messages: list[Chunk]) -> tuple:
    session, call, metadata = client._next_call()
    assert session is not None
    token = resume_token(session.keys, call=call, stream_id=stream_id, query=False)
    first = dataclasses.replace(messages[0], resume_stream=stream_id, resume_seal=token)
    return [first, *messages[1:]], metadata


def test_upload_cut_by_a_proxy_resumes_and_each_chunk_arrives_once(
    aggregator: Aggregator, deployment: Deployment, proxy: CuttingProxy, metrics_port: int
) -> None:
    client, round_number, _spec = joined(deployment, proxy.target, "site-a")
    with client:
        parts = client.encode_update(update(0.25), 3.0)
        n, sealed = stream_bytes(parts)
        digest = hashlib.sha256(b"".join(bytes(memoryview(p).cast("B")) for p in parts)).digest()
        received = metric(metrics_port, "attestfl_bytes_received")
        proxy.arm("up", int(2.5 * 1024 * 1024))
        receipt = client.upload_update(round_number, update(0.25), 3.0)
        assert proxy.cuts >= 1
        assert client.session is not None
        assert receipt.update_sha256 == digest and receipt.verify(client.session.aggregator_keys.ed25519)
        parked = events(aggregator, "upload_parked", "site-a")
        resumed = events(aggregator, "upload_resumed", "site-a")
        assert len(parked) == 1 and len(resumed) == 1
        k = parked[0]["index"]
        assert 0 < k < n and resumed[0]["index"] == k and parked[0]["bytes"] == k * 1024 * 1024
        accepted = events(aggregator, "update_accepted", "site-a")
        assert len(accepted) == 1 and accepted[0]["update_sha256"] == digest.hex()
        # Every sealed chunk arrived exactly once: the sealed bytes received are the stream's.
        assert metric(metrics_port, "attestfl_bytes_received") - received == sealed
        assert receipt.call == resumed[0]["call"]  # the receipt names the stream's call


def test_replayed_foreign_and_truncated_resumes_are_refused(
    aggregator: Aggregator, deployment: Deployment, metrics_port: int
) -> None:
    client, round_number, _spec = joined(deployment, aggregator.target, "site-b")
    other, _round, _ = joined(deployment, aggregator.target, "site-c")
    with client, other:
        # A replayed chunk: the resume starts at a chunk the aggregator already has.
        chunks, stream_id, _parts = park_upload(aggregator, client, round_number, 0.5, 3, metrics_port)
        assert _where(client, client.session, stream_id) == 3
        messages, metadata = resume_call(client, stream_id, chunks[2:])
        with pytest.raises(grpc.RpcError) as replayed:
            client.stub.UploadUpdate(iter(messages), metadata=metadata, timeout=30)
        assert replayed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "chunk 2 arrived where chunk 3 was expected" in replayed.value.details()
        # The refusal is for good: nothing of that stream is held any more.
        with pytest.raises(grpc.RpcError) as gone:
            _where(client, client.session, stream_id)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND

        # A chunk from another session's stream, at the right index.
        chunks, stream_id, _parts = park_upload(aggregator, client, round_number, 0.5, 2, metrics_port)
        _s, other_call, _m = other._next_call()
        foreign = list(other.sealed_update(round_number, 1, other_call, {}, 1.0, other.encode_update(update(0.5), 1.0)))
        messages, metadata = resume_call(client, stream_id, foreign[2:])
        with pytest.raises(grpc.RpcError) as moved:
            client.stub.UploadUpdate(iter(messages), metadata=metadata, timeout=30)
        assert moved.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "chunk 2 failed authentication" in moved.value.details()
        # ... and another session cannot name this session's parked stream at all.
        chunks, stream_id, _parts = park_upload(aggregator, client, round_number, 0.5, 2, metrics_port)
        with pytest.raises(grpc.RpcError) as elsewhere:
            _where(other, other.session, stream_id)
        assert elsewhere.value.code() == grpc.StatusCode.NOT_FOUND

        # A truncated stream: the resume sends the rest but its final chunk.
        messages, metadata = resume_call(client, stream_id, chunks[2:-1])
        with pytest.raises(grpc.RpcError) as truncated:
            client.stub.UploadUpdate(iter(messages), metadata=metadata, timeout=30)
        assert truncated.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "truncated" in truncated.value.details()
        # A copied resume call (the same call counter) is refused as a replay.
        with pytest.raises(grpc.RpcError) as copied:
            client.stub.UploadUpdate(iter(messages), metadata=metadata, timeout=30)
        assert copied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reasons = [e["reason"] for e in events(aggregator, "update_refused", "site-b")]
        assert any("replayed" in r for r in reasons)
        assert any("failed authentication" in r for r in reasons)
        assert any("truncated" in r for r in reasons)
        assert not events(aggregator, "update_accepted", "site-b")


def test_a_resume_after_the_retention_window_starts_over(
    aggregator: Aggregator, deployment: Deployment, metrics_port: int
) -> None:
    client, round_number, _spec = joined(deployment, aggregator.target, "site-d")
    with client:
        chunks, stream_id, parts = park_upload(aggregator, client, round_number, 0.75, 3, metrics_port)
        time.sleep(RETENTION + 0.5)
        with pytest.raises(grpc.RpcError) as gone:
            _where(client, client.session, stream_id)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND and "start the upload over" in gone.value.details()
        stream = SentStream(iter(chunks[:1]))
        list(stream)
        dropped = grpc.RpcError()
        dropped.code = lambda: grpc.StatusCode.UNAVAILABLE
        assert resume_upload(client, client.session, stream, parts, dropped) is None  # the caller starts over
        receipt = client.upload_update(round_number, update(0.75), 1.0)
        accepted = events(aggregator, "update_accepted", "site-d")
        assert len(accepted) == 1 and accepted[0]["update_sha256"] == receipt.update_sha256.hex()


def test_download_cut_by_a_proxy_resumes_with_the_same_model(
    aggregator: Aggregator, deployment: Deployment, proxy: CuttingProxy
) -> None:
    client, round_number, spec = joined(deployment, proxy.target, "site-e")
    with client:
        whole = client.download_model_bytes(round_number, spec)
        cuts = proxy.cuts
        sizes: list[int] = []
        proxy.arm("down", int(2.5 * 1024 * 1024))
        resumed = client.download_model_bytes(round_number, spec, on_chunk=sizes.append)
        assert proxy.cuts == cuts + 1
        assert hashlib.sha256(resumed).digest() == hashlib.sha256(whole).digest()
        assert hashlib.sha256(whole).digest() == hashlib.sha256(encode_tensors(MODEL)).digest() or round_number > 1
        assert len(sizes) == -(-len(whole) // (1024 * 1024))  # each chunk opened once


def test_download_cut_before_its_first_chunk_asks_for_the_model_again(
    aggregator: Aggregator, deployment: Deployment, proxy: CuttingProxy
) -> None:
    """A connection dropped before the site has read a single chunk leaves nothing to resume
    (no stream header yet): the site asks for the model again, in a new call."""
    client, round_number, spec = joined(deployment, proxy.target, "site-g")
    with client:
        whole = bytes(client.download_model_bytes(round_number, spec))
        cuts = proxy.cuts
        sizes: list[int] = []
        proxy.arm("down", 64 * 1024)  # inside the first 1 MiB chunk
        again = client.download_model_bytes(round_number, spec, on_chunk=sizes.append)
        assert proxy.cuts == cuts + 1
        assert bytes(again) == whole
        assert len(sizes) == -(-len(whole) // (1024 * 1024))  # each chunk opened once


def test_a_download_resume_names_only_a_stream_sent_to_this_session(
    aggregator: Aggregator, deployment: Deployment
) -> None:
    client, round_number, _spec = joined(deployment, aggregator.target, "site-f")
    with client:
        session, call, metadata = client._next_call()
        forged = StreamHeader(session.claims.session_id, bytes(16), "model", b"model;round=1;site=site-f;call=1")
        request = client._sealed(
            session,
            "DownloadModel",
            call,
            pb.DownloadRequest(round=round_number, start_index=1, resume_header=forged.encode()),
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(client.stub.DownloadModel(request, metadata=metadata, timeout=30))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "did not send to this session" in refused.value.details()


def test_the_audit_log_checks_parked_and_resumed_uploads(aggregator: Aggregator, deployment: Deployment) -> None:
    """`audit verify` checks the new entries: a resume continues a parked stream of the same site, round,
    call and chunk, in a later call (the log of this module's aggregator, with its resumes and refusals)."""
    result = verify_log(deployment.directory / deployment.log_dir, deployment.site_policy())
    assert events(aggregator, "upload_resumed", "site-a") and events(aggregator, "upload_parked", "site-b")
    assert result.valid, [str(p)[:300] for p in result.problems]
