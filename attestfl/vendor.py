"""The vendor's side of evaluation jobs (docs/vendor-evaluation.md): appraise the aggregator's
evidence like a site does, submit a model encrypted to its attested key and signed by the
vendor's key, and fetch the vendor's own report (sealed to a fresh key, signed by the enclave).

A vendor is a party beside the sites; this client lives in the composition layer because it
reuses the sites' appraisal of the aggregator (:mod:`fedsite.client`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.public import PrivateKey

from attestation.binding import BoundKeys
from attestation.bundle import appraise_bundle
from attestation.bundle_abi import parse_bundle
from attestation.errors import EXIT_REFUSED, EXIT_UNUSABLE, AttestationError, AttestflError
from attestation.policy import Policy
from enclave.keys import verify_enclave_signature
from fedsite.client import CHANNEL_OPTIONS, AggregatorNotTrusted, require_measurement_pins
from protocol.vendor import (
    ARTEFACT_CHUNK,
    ArtefactSealer,
    SealedArtefact,
    VendorManifest,
    chunk_count,
    decrypt_artefact,
    entry_point_digest,
    new_content_key,
    open_sealed_key,
    report_request_message,
    report_response_message,
    seal_key,
    submission_message,
)
from protocol.wire import federation_pb2 as pb
from protocol.wire import federation_pb2_grpc as pb_grpc


class VendorRefused(AttestflError):
    """The aggregator refused the vendor's request; ``reasons`` lists every failed check."""

    exit_code = EXIT_REFUSED

    def __init__(self, reasons: tuple[str, ...]) -> None:
        super().__init__("refused:" + "".join(f"\n  - {r}" for r in reasons))
        self.reasons = reasons


def public_key(signing_key: Ed25519PrivateKey) -> bytes:
    return signing_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class VendorClient:
    """One vendor's connection to an aggregator: ``policy`` is the vendor's policy for the
    aggregator's evidence (it must pin the aggregator's measurement)."""

    def __init__(
        self,
        target: str,
        *,
        vendor: str,
        signing_key: Ed25519PrivateKey,
        policy: Policy,
        timeout: float = 30.0,
        allow_unpinned_aggregator: bool = False,
    ) -> None:
        require_measurement_pins(policy, allow_unpinned=allow_unpinned_aggregator)
        self.vendor = vendor
        self.signing_key = signing_key
        self.policy = policy
        self.timeout = timeout
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.aggregator: BoundKeys | None = None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> VendorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verify_aggregator(self) -> BoundKeys:
        """Appraise the aggregator's evidence for a fresh nonce; raise unless the policy accepts it."""
        nonce = os.urandom(32)
        response = self.stub.GetEvidence(pb.EvidenceRequest(nonce=nonce), timeout=self.timeout)
        try:
            bundle = parse_bundle(response.bundle)
            appraisal = appraise_bundle(bundle, expected_nonce=nonce, policy=self.policy, at=datetime.now(UTC))
        except AttestationError as exc:
            raise AggregatorNotTrusted(f"the aggregator's evidence is unusable: {exc}") from None
        if not appraisal.accepted:
            raise AggregatorNotTrusted(
                "the aggregator's evidence fails this vendor's policy:", tuple(str(r) for r in appraisal.reasons)
            )
        self.aggregator = bundle.keys
        return bundle.keys

    def submit(self, model: bytes | Path, *, name: str, entry_point: str, entry_sha256: bytes | None = None) -> str:
        """Submit ``model`` (safetensors bytes, or the path of a safetensors file of any size) for
        evaluation; returns the job id. The model is encrypted to the aggregator's attested key
        only after its evidence passed, and streamed in ARTEFACT_CHUNK chunks (VendorUpload): a
        file is read, encrypted and sent chunk by chunk, never whole in memory."""
        keys = self.verify_aggregator()
        model_sha256, model_bytes = _digest(model)
        manifest = VendorManifest(
            vendor=self.vendor,
            model=name,
            model_sha256=model_sha256,
            model_bytes=model_bytes,
            entry_point=entry_point,
            entry_sha256=entry_sha256 if entry_sha256 is not None else entry_point_digest(entry_point),
        )
        manifest.check()
        manifest_bytes = manifest.to_bytes()
        content_key = new_content_key()
        sealer = ArtefactSealer(content_key)
        sealed_key = seal_key(content_key, keys.x25519)
        signature = self.signing_key.sign(
            submission_message(
                manifest_bytes,
                aggregator_x25519=keys.x25519,
                aggregator_ed25519=keys.ed25519,
                sealed_key=sealed_key,
                header=sealer.header,
            )
        )
        submission = pb.VendorSubmission(
            manifest=manifest_bytes,
            artefact=pb.VendorArtefact(header=sealer.header, sealed_key=sealed_key),
            vendor_public=public_key(self.signing_key),
            signature=signature,
        )

        def messages() -> Iterator[pb.VendorUploadChunk]:
            yield pb.VendorUploadChunk(submission=submission)
            for index, (piece, final) in enumerate(_pieces(model, model_bytes)):
                yield pb.VendorUploadChunk(index=index, ciphertext=sealer.push(piece, final=final))

        response = self.stub.VendorUpload(messages(), timeout=self.timeout + model_bytes / (1 << 20))
        if not response.accepted:
            raise VendorRefused(tuple(response.reasons))
        return str(response.job_id)

    def report(self, job_id: str) -> dict[str, Any] | None:
        """This vendor's own report of ``job_id`` (None while sites are still evaluating): opened
        with a fresh key and checked against the attested enclave key."""
        keys = self.aggregator or self.verify_aggregator()
        private = PrivateKey.generate()
        vendor_x25519 = bytes(private.public_key)
        issued = int(time.time() * 1000)
        signature = self.signing_key.sign(
            report_request_message(
                vendor=self.vendor,
                job_id=job_id,
                vendor_x25519=vendor_x25519,
                issued_unix_ms=issued,
                aggregator_ed25519=keys.ed25519,
            )
        )
        response = self.stub.VendorReport(
            pb.VendorReportRequest(
                vendor=self.vendor,
                job_id=job_id,
                vendor_x25519=vendor_x25519,
                issued_unix_ms=issued,
                signature=signature,
            ),
            timeout=self.timeout,
        )
        if response.reasons:
            raise VendorRefused(tuple(response.reasons))
        if not response.complete:
            return None
        message = report_response_message(job_id=job_id, vendor=self.vendor, sealed_report=response.sealed_report)
        if not verify_enclave_signature(keys.ed25519, response.signature, message):
            raise AggregatorNotTrusted("the report is not signed by the attested aggregator key")
        sealed = pb.VendorArtefact.FromString(response.sealed_report)
        content_key = open_sealed_key(bytes(sealed.sealed_key), private)
        data = decrypt_artefact(
            SealedArtefact(bytes(sealed.header), tuple(bytes(c) for c in sealed.chunks)), content_key
        )
        report: dict[str, Any] = json.loads(bytes(data))
        return report

    def wait_report(self, job_id: str, *, timeout: float = 60.0, poll: float = 0.2) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            report = self.report(job_id)
            if report is not None:
                return report
            if time.monotonic() > deadline:
                raise AttestflError(f"job {job_id}: the sites did not all report within {timeout:g} s")
            time.sleep(poll)


def _digest(model: bytes | Path) -> tuple[bytes, int]:
    if isinstance(model, bytes | bytearray):
        return hashlib.sha256(model).digest(), len(model)
    hasher, size = hashlib.sha256(), 0
    with open(model, "rb") as handle:
        while piece := handle.read(ARTEFACT_CHUNK):
            hasher.update(piece)
            size += len(piece)
    return hasher.digest(), size


def _pieces(model: bytes | Path, size: int) -> Iterator[tuple[bytes, bool]]:
    """The model's plaintext in ARTEFACT_CHUNK pieces, each with whether it is the last one."""
    count = chunk_count(size)
    if isinstance(model, bytes | bytearray):
        for index in range(count):
            yield bytes(model[index * ARTEFACT_CHUNK : (index + 1) * ARTEFACT_CHUNK]), index == count - 1
        return
    with open(model, "rb") as handle:
        for index in range(count):
            piece = handle.read(ARTEFACT_CHUNK)
            if len(piece) != min(ARTEFACT_CHUNK, size - index * ARTEFACT_CHUNK):
                raise VendorKeyError(f"{model}: the file changed while it was submitted")
            yield piece, index == count - 1


# --- attestfl vendor keygen | submit | report -------------------------------------------------------


def _load_key(path: str) -> Ed25519PrivateKey:
    from attestation.files import read_bounded

    data = read_bounded(Path(path), 4096, "vendor key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise VendorKeyError(f"{path}: not a PEM Ed25519 private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise VendorKeyError(f"{path}: not an Ed25519 private key")
    return key


class VendorKeyError(AttestflError):
    """The vendor's key file is unusable."""

    exit_code = EXIT_UNUSABLE


def _client(args: argparse.Namespace) -> VendorClient:
    return VendorClient(
        args.aggregator, vendor=args.vendor, signing_key=_load_key(args.key), policy=Policy.load(args.policy)
    )


def run_keygen(args: argparse.Namespace) -> int:
    key = Ed25519PrivateKey.generate()
    path = Path(args.out)
    if path.exists():
        raise VendorKeyError(f"{path} exists: not overwritten")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    print(public_key(key).hex())
    return 0


def run_submit(args: argparse.Namespace) -> int:
    model = Path(args.model)
    if not model.is_file():
        raise VendorKeyError(f"{model}: no such model file")
    with _client(args) as vendor:
        try:
            job = vendor.submit(model, name=args.name, entry_point=args.entry_point)
        except VendorRefused as exc:
            print(f"attestfl: refused:{''.join(f'{chr(10)}  - {r}' for r in exc.reasons)}", file=sys.stderr)
            return EXIT_REFUSED
    print(job)
    return 0


def run_report(args: argparse.Namespace) -> int:
    with _client(args) as vendor:
        try:
            report = vendor.wait_report(args.job, timeout=args.wait) if args.wait else vendor.report(args.job)
        except VendorRefused as exc:
            print(f"attestfl: refused:{''.join(f'{chr(10)}  - {r}' for r in exc.reasons)}", file=sys.stderr)
            return EXIT_REFUSED
    if report is None:
        print("attestfl: the sites have not all reported yet (try --wait SECONDS)", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def add_vendor_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vendor = subparsers.add_parser("vendor", help="submit a model for evaluation at attested sites (a vendor)")
    sub = vendor.add_subparsers(dest="vendor_command", required=True, metavar="COMMAND")
    keygen = sub.add_parser("keygen", help="create a vendor signing key (PEM), print its public key (hex)")
    keygen.add_argument("--out", required=True, metavar="FILE")
    keygen.set_defaults(handler=run_keygen)
    for name, handler, text in (
        ("submit", run_submit, "verify the aggregator, submit a model sealed to it; print the job id"),
        ("report", run_report, "fetch this vendor's own report of a job (JSON)"),
    ):
        command = sub.add_parser(name, help=text, description=text + ". Exit 0: done; 1: refused; 2: unusable input.")
        command.add_argument("--aggregator", required=True, metavar="HOST:PORT")
        command.add_argument("--policy", required=True, metavar="FILE", help="policy for the aggregator's evidence")
        command.add_argument("--key", required=True, metavar="FILE", help="the vendor's signing key (keygen)")
        command.add_argument("--vendor", required=True, help="the vendor's name in the task's vendor policy")
        command.set_defaults(handler=handler)
        if name == "submit":
            command.add_argument("--model", required=True, metavar="FILE", help="safetensors file")
            command.add_argument("--name", required=True, help="the model's name (letters, digits, . _ -)")
            command.add_argument("--entry-point", required=True, help="module:function (pinned by its source digest)")
        else:
            command.add_argument("--job", required=True)
            command.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")


__all__ = ["VendorClient", "VendorKeyError", "VendorRefused", "add_vendor_commands", "public_key"]
