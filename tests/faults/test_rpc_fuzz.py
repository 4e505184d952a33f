"""A fuzz target per RPC of a real `attestfl serve`: hypothesis sends malformed messages (raw
bytes, and well-formed messages with hostile field values) and metadata. Every answer must be a
clean refusal with a status a client can act on, never INTERNAL or UNKNOWN, no internal detail
in the reply, and the aggregator must stay healthy. Bounded: a few hundred calls in all."""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation import Aggregator, Deployment, run_aggregator
from peers import SourceForwarder
from protocol.wire import federation_pb2 as pb
from protocol.wire import health_pb2, health_pb2_grpc

SERVICE = "attestfl.v1.Federation"
UNARY = ("GetEvidence", "GetChallenge", "Admit", "GetTask", "ReportMetrics")
CLEAN = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
}
EXAMPLES = int(os.environ.get("ATTESTFL_FUZZ_EXAMPLES", "100"))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment(tmp_path_factory.mktemp("deployment"), tmp_path_factory.mktemp("vendor"), sites={"site-a": ""})


@pytest.fixture(scope="module")
def aggregator(deployment: Deployment) -> Iterator[Aggregator]:
    yield from run_aggregator(deployment)


@pytest.fixture(scope="module")
def channels(aggregator: Aggregator) -> Iterator[dict[str, grpc.Channel]]:
    """One client address per method (127.0.0.10, .11, ...): each within its own rate budget."""
    forwarders = {
        name: SourceForwarder(aggregator.ready["port"], f"127.0.0.{10 + i}")
        for i, name in enumerate(UNARY + ("UploadUpdate", "DownloadModel"))
    }
    opened = {name: grpc.insecure_channel(f.target) for name, f in forwarders.items()}
    yield opened
    for channel in opened.values():
        channel.close()
    for forwarder in forwarders.values():
        forwarder.close()


def _check(error: grpc.RpcError | None) -> None:
    if error is None:
        return
    assert error.code() in CLEAN, (error.code(), error.details())
    assert "Traceback" not in (error.details() or "") and "Error" not in (error.details() or "").split(":")[0]


metadata_strategy = st.lists(
    st.tuples(
        st.sampled_from(["attestfl-session", "attestfl-call", "authorization", "x-other"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
    ),
    max_size=3,
).map(tuple)

hostile_admit = st.builds(
    pb.AdmitRequest,
    site_id=st.one_of(st.sampled_from(["site-a", "nobody", ""]), st.text(max_size=200)),
    challenge=st.binary(max_size=80),
    site_x25519_public=st.binary(max_size=40),
    site_ed25519_public=st.binary(max_size=40),
    evidence_format=st.one_of(st.sampled_from(["bundle", "app-attest"]), st.text(max_size=40)),
    evidence=st.one_of(st.binary(max_size=2048), st.just(b"\xd9\xd9\xf7" + os.urandom(100))),
    identity_public=st.binary(max_size=40),
    identity_signature=st.binary(max_size=80),
    aggregator_evidence_sha256=st.binary(max_size=40),
).map(lambda m: m.SerializeToString())


@pytest.mark.parametrize("method", UNARY)
def test_fuzz_unary_rpc(method: str, channels: dict[str, grpc.Channel], aggregator: Aggregator) -> None:
    call = channels[method].unary_unary(
        f"/{SERVICE}/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    payloads = hostile_admit if method == "Admit" else st.binary(max_size=4096)

    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
    )
    @given(payload=payloads, metadata=metadata_strategy)
    def one(payload: bytes, metadata: tuple) -> None:
        try:
            call(payload, metadata=metadata, timeout=30)
        except grpc.RpcError as error:
            _check(error)

    one()
    _healthy(aggregator)


def test_fuzz_streams(channels: dict[str, grpc.Channel], aggregator: Aggregator) -> None:
    upload = channels["UploadUpdate"].stream_unary(
        f"/{SERVICE}/UploadUpdate", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    download = channels["DownloadModel"].unary_stream(
        f"/{SERVICE}/DownloadModel", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )

    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
    )
    @given(chunks=st.lists(st.binary(max_size=512), max_size=4), metadata=metadata_strategy)
    def one(chunks: list[bytes], metadata: tuple) -> None:
        try:
            upload(iter(chunks), metadata=metadata, timeout=30)
        except grpc.RpcError as error:
            _check(error)
        try:
            list(download(b"".join(chunks[:1]), metadata=metadata, timeout=30))
        except grpc.RpcError as error:
            _check(error)

    one()
    _healthy(aggregator)


def _healthy(aggregator: Aggregator) -> None:
    assert aggregator.process.poll() is None
    with grpc.insecure_channel(aggregator.target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    internal = [e for e in aggregator.events() if e["message"] in ("internal error", "fail-stop")]
    assert internal == [], internal[:3]
