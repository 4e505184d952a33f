"""The network is hostile before authentication: floods from another client address against a
real `attestfl serve`, while an honest site joins from its own."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import cbor2
import grpc
import numpy as np
import pytest

from aggregator.audit.log import ENTRIES_FILE, HEADS_FILE, scan_records
from attestation.binding import BoundKeys
from attestation.bundle_abi import encode_bundle
from enclave.attester import make_bundle
from enclave.identity import SiteIdentity
from enclave.keys import EnclaveKeys
from enclave.simulated.attester import SimulatedSnpAttester
from federation import MODEL, Aggregator, Deployment, run_aggregator
from fedsite.client import admit_request
from peers import BodilessCalls, SourceForwarder
from protocol.formulas import admission_nonce, upload_context
from protocol.streams import StreamSealer
from protocol.wire import federation_pb2 as pb
from protocol.wire import federation_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment(
        tmp_path_factory.mktemp("deployment"),
        tmp_path_factory.mktemp("vendor"),
        sites={f"site-{x}": "" for x in "abcdef"},
        task='rounds = 50\nmin_sites = 3\nround_deadline = "600s"',
    )


@pytest.fixture(scope="module")
def aggregator(deployment: Deployment) -> Iterator[Aggregator]:
    yield from run_aggregator(deployment)


def _attacker(aggregator: Aggregator, address: str) -> SourceForwarder:
    return SourceForwarder(aggregator.ready["port"], address)


def _timed_join(deployment: Deployment, aggregator: Aggregator, site_id: str) -> float:
    with deployment.client(aggregator.target, site_id=site_id) as client:
        started = time.perf_counter()
        client.join()
        elapsed = time.perf_counter() - started
        assert client.task().round >= 1
    return elapsed


def _log_bytes(deployment: Deployment) -> int:
    log = deployment.directory / "audit-log"
    return (
        sum((log / name).stat().st_size for name in (ENTRIES_FILE, HEADS_FILE))
        + (deployment.directory / "aggregator.stderr").stat().st_size
    )


def test_256_bodiless_calls_do_not_delay_a_legitimate_join(
    deployment: Deployment, aggregator: Aggregator, record_property
) -> None:
    baseline = min(_timed_join(deployment, aggregator, "site-a") for _ in range(3))
    forwarder = _attacker(aggregator, "127.0.0.2")
    try:
        flood = BodilessCalls(forwarder.target, "Admit", count=256, connections=8)
        flooded = _timed_join(deployment, aggregator, "site-b")  # while all 256 are held open
        codes = flood.finish()  # those that got a slot end at the request deadline
    finally:
        forwarder.close()
    record_property("join_seconds_baseline", round(baseline, 4))
    record_property("join_seconds_during_256_bodiless_calls", round(flooded, 4))
    assert flooded < baseline + 0.5, (baseline, flooded)
    # Over a budget: refused at once; within one: ended at the request deadline (or with the
    # attacker's connection). Never served, never waiting on the honest site.
    assert len(codes) == 256 and set(codes) <= {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE"}, sorted(
        set(codes)
    )
    assert codes.count("DEADLINE_EXCEEDED") <= 32  # at most the per-address budget ever held a slot


def test_bodiless_calls_on_session_methods_hold_nothing(aggregator: Aggregator) -> None:
    flood = BodilessCalls(aggregator.target, "GetTask", count=64, connections=2)
    assert set(flood.finish()) == {"UNAUTHENTICATED"}  # no session: refused before any message is awaited


def test_unauthenticated_log_growth_per_request_is_bounded(
    deployment: Deployment, aggregator: Aggregator, record_property
) -> None:
    forwarder = _attacker(aggregator, "127.0.0.3")
    entries_before = len(scan_records((deployment.directory / "audit-log" / ENTRIES_FILE).read_bytes()).records)
    before = _log_bytes(deployment)
    aggregator_keys = BoundKeys(bytes.fromhex(aggregator.ready["x25519"]), bytes.fromhex(aggregator.ready["ed25519"]))
    garbage = os.urandom(60 * 1024)  # as much evidence as Admit takes, none of it valid
    requests, refused = 0, 0
    try:
        with grpc.insecure_channel(forwarder.target) as channel:
            stub = pb_grpc.FederationStub(channel)
            for i in range(150):
                site_id = ("site-a", "nobody", "x" * 128)[i % 3]
                try:
                    challenge = stub.GetChallenge(pb.ChallengeRequest(site_id=site_id), timeout=10).challenge
                    requests += 1
                    keys = EnclaveKeys()
                    request = admit_request(
                        site_id=site_id,
                        challenge=challenge,
                        session_keys=keys.public,
                        evidence_format="bundle",
                        evidence=garbage,
                        identity=SiteIdentity.generate(site_id),
                        aggregator_keys=aggregator_keys,
                        aggregator_evidence_sha256=os.urandom(32),
                    )
                    request.evidence_format = "f" * 10_000
                    requests += 1
                    assert not stub.Admit(request, timeout=10).admitted
                except grpc.RpcError as error:
                    assert error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT), error
                    refused += 1
    finally:
        forwarder.close()
    time.sleep(0.5)
    grown = _log_bytes(deployment) - before
    record_property("unauthenticated_requests", requests + refused)
    record_property("log_bytes_per_unauthenticated_request", round(grown / (requests + refused), 1))
    assert refused > 0  # the per-address rate limit bit
    assert grown / (requests + refused) < 600, grown
    records = scan_records((deployment.directory / "audit-log" / ENTRIES_FILE).read_bytes()).records[entries_before:]
    logged = [cbor2.loads(r.payload) for r in records]
    unauthenticated = [e for e in logged if e["kind"] == "admission"]
    assert unauthenticated and all(
        not e["fields"]["admitted"] and "evidence" not in e["fields"] for e in unauthenticated
    )
    assert max(len(r.payload) for r in records) < 1500
    # The refusals over the rate are counted, not dropped: one entry per flush period.
    deadline = time.time() + 30
    counted = 0
    while time.time() < deadline and not counted:
        counted = sum(
            e["by_peer"].get("127.0.0.3", 0) for e in aggregator.events() if e["message"] == "refusals_suppressed"
        )
        time.sleep(0.5)
    assert counted > 0


def test_a_challenge_flood_does_not_evict_a_real_sites_challenge(
    deployment: Deployment, aggregator: Aggregator
) -> None:
    with grpc.insecure_channel(aggregator.target) as channel:
        stub = pb_grpc.FederationStub(channel)
        challenge = stub.GetChallenge(pb.ChallengeRequest(site_id="site-c"), timeout=10).challenge
        forwarder = _attacker(aggregator, "127.0.0.4")
        try:
            with grpc.insecure_channel(forwarder.target) as attacker_channel:
                attacker = pb_grpc.FederationStub(attacker_channel)
                answered = 0
                for _ in range(4096):
                    try:
                        attacker.GetChallenge(pb.ChallengeRequest(site_id="site-c"), timeout=10)
                        answered += 1
                    except grpc.RpcError as error:
                        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            forwarder.close()
        keys = EnclaveKeys()
        bundle = make_bundle(SimulatedSnpAttester(deployment.sim_dir), keys, admission_nonce("site-c", challenge))
        request = admit_request(
            site_id="site-c",
            challenge=challenge,
            session_keys=keys.public,
            evidence_format="bundle",
            evidence=encode_bundle(bundle),
            identity=deployment.identity("site-c"),
            aggregator_keys=BoundKeys(
                bytes.fromhex(aggregator.ready["x25519"]), bytes.fromhex(aggregator.ready["ed25519"])
            ),
            aggregator_evidence_sha256=bytes(32),
        )
        assert stub.Admit(request, timeout=30).admitted
    assert answered < 4096  # and the rate limit held the flood back as well


def test_unknown_site_ids_get_challenges_like_known_ones(aggregator: Aggregator) -> None:
    with grpc.insecure_channel(aggregator.target) as channel:
        stub = pb_grpc.FederationStub(channel)
        known = stub.GetChallenge(pb.ChallengeRequest(site_id="site-a"), timeout=10)
        unknown = stub.GetChallenge(pb.ChallengeRequest(site_id="not-on-the-roster"), timeout=10)
    assert len(known.challenge) == len(unknown.challenge)
    assert abs(known.expires_unix_ms - unknown.expires_unix_ms) < 5000


def test_an_admitted_site_cannot_hold_more_than_one_upload(deployment: Deployment, aggregator: Aggregator) -> None:
    with deployment.client(aggregator.target, site_id="site-d") as client:
        client.join()
        task = client.task()
        update = {name: np.full(array.shape, 0.1, np.float32) for name, array in MODEL.items()}
        session, call, metadata = client._next_call()
        sealer = StreamSealer(
            session.keys.site_to_aggregator,
            session_id=session.claims.session_id,
            purpose="update",
            context=upload_context(task.round, task.attempt, client.site_id, call),
        )
        _index, chunk0 = sealer.seal(b"\0" * 64, final=False)  # a genuine chunk 0: it authenticates; more would follow
        hold = threading.Event()

        def slow() -> Iterator[pb.SealedChunk]:
            yield pb.SealedChunk(header=sealer.header, index=0, final=False, ciphertext=chunk0)
            hold.wait(20)

        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                client.stub.UploadUpdate(slow(), metadata=metadata, timeout=30)
            except grpc.RpcError as error:
                outcome["code"] = error.code()

        holder = threading.Thread(target=run)
        holder.start()
        time.sleep(1.0)
        with pytest.raises(grpc.RpcError) as second:
            client.upload_update(task.round, update, 1.0, attempt=task.attempt)
        hold.set()
        holder.join(30)
    assert second.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "in flight" in second.value.details()
