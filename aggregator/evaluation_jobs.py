"""Vendor evaluation jobs inside the aggregator's TEE (docs/vendor-evaluation.md).

A vendor that appraised the aggregator's evidence submits its model encrypted to the enclave's
attested X25519 key (``VendorSubmit``). The enclave checks, and refuses with every failed
check: the vendor and its signing key are in the task's vendor policy, the signature binds the
manifest to this aggregator's keys and this ciphertext, the artefact opens and is the model the
manifest names (digest, size, a safetensors file). It then re-encrypts the model under a fresh
content key (the plaintext is dropped) and, for each evaluating site that asks (``VendorJobs``),
seals that key to the site's attested session key. Sites return metrics and bootstrap
replicates (``VendorReportMetrics``); a site with fewer examples than ``min_examples`` is
suppressed. When every evaluating site reported, the network's comparative report (JSON +
HTML) is written to ``report_dir``; a vendor asks for its own row (``VendorReport``), sealed to
a key it names and signed by the enclave.

Audit entries (each logged before it takes effect): ``vendor_submission``, ``vendor_refused``,
``vendor_dispatch``, ``vendor_evaluation``, ``vendor_release``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from aggregator.gate import MemoryBudget, Ticket
from aggregator.service import Malformed, UpdateRefused, _parse, _short
from aggregator.vendor_reports import job_row, render_html, vendor_view
from aggregator.vendor_state import StoredJob, VendorStore
from enclave.keys import EnclaveKeyError, EnclaveKeys, verify_enclave_signature
from protocol.formulas import MAX_METRIC_NAME, MAX_METRICS
from protocol.tensors import UpdateFormatError, decode_tensors
from protocol.vendor import (
    ARTEFACT_CHUNK,
    MAX_INLINE_MODEL_BYTES,
    REPORT_REQUEST_SKEW_MS,
    VENDOR_METRICS,
    ArtefactOpener,
    SealedArtefact,
    VendorError,
    VendorManifest,
    VendorPolicy,
    decrypt_artefact,
    encrypt_artefact,
    new_content_key,
    report_request_message,
    report_response_message,
    seal_key,
    submission_message,
    valid_name,
)
from protocol.wire import federation_pb2 as pb


@dataclass
class Job:
    manifest: VendorManifest
    manifest_bytes: bytes
    artefact: SealedArtefact  # re-encrypted inside the enclave under ``key``
    key: bytes = field(repr=False)
    submitted: str
    dispatched: set[str] = field(default_factory=set)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: Ticket | None = field(default=None, repr=False)  # the stored ciphertext's place in the memory budget
    #: Set when the report deadline closed the job before every site reported: the sites that did not.
    missing: list[str] | None = None

    @property
    def closed(self) -> bool:
        """Every evaluating site reported, or the report deadline passed."""
        return self.missing is not None

    def stored(self) -> StoredJob:
        return StoredJob(
            job_id=self.job_id,
            manifest=self.manifest_bytes,
            key=self.key,
            header=self.artefact.header,
            chunks=self.artefact.chunks,
            submitted=self.submitted,
            dispatched=sorted(self.dispatched),
            results=self.results,
            missing=self.missing,
        )

    @property
    def job_id(self) -> str:
        return self.manifest.job_id

    def describe(self) -> dict[str, Any]:
        return {
            "vendor": self.manifest.vendor,
            "model": self.manifest.model,
            "job": self.job_id,
            "model_sha256": self.manifest.model_sha256.hex(),
        }


def _artefact(message: pb.VendorArtefact) -> SealedArtefact:
    return SealedArtefact(bytes(message.header), tuple(bytes(c) for c in message.chunks))


class EvaluationJobs:
    """The vendor evaluation jobs of one aggregator run. Thread-safe."""

    def __init__(
        self, policy: VendorPolicy, keys: EnclaveKeys, record: Any, report_dir: Path, store: VendorStore | None = None
    ) -> None:
        self.policy = policy
        self.store = store  # sealed job state (aggregator/vendor_state.py); None: jobs end with the process
        self.keys = keys
        self.record = record  # the service's _record: durable, fail-stop
        self.report_dir = report_dir
        self.jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self.memory = MemoryBudget(policy.memory_per_vendor, policy.memory_total)

    # --- submission ----------------------------------------------------------------------------

    def check_signed(self, request: pb.VendorSubmission) -> tuple[VendorManifest, list[str]]:
        """The checks made before anything is decrypted: the manifest, the vendor's key in the
        policy, the signature over manifest, aggregator keys, sealed key and stream header, the size."""
        reasons: list[str] = []
        try:
            manifest = VendorManifest.from_bytes(bytes(request.manifest))
        except VendorError as exc:
            return VendorManifest("?", "?", b"", 0, "", b""), [f"vendor.manifest: {exc}"]
        expected = self.policy.keys.get(manifest.vendor)
        public = bytes(request.vendor_public)
        if expected is None:
            reasons.append(f"vendor.unknown: vendor {manifest.vendor!r} is not in the task's vendor policy")
        elif public != expected:
            reasons.append(f"vendor.key: the signing key is not the one the policy names for {manifest.vendor!r}")
        message = submission_message(
            bytes(request.manifest),
            aggregator_x25519=self.keys.public.x25519,
            aggregator_ed25519=self.keys.public.ed25519,
            sealed_key=bytes(request.artefact.sealed_key),
            header=bytes(request.artefact.header),
        )
        if len(public) != 32 or not verify_enclave_signature(public, bytes(request.signature), message):
            reasons.append(
                "vendor.signature: the submission is not signed by the vendor key over this manifest, "
                "these aggregator keys and this artefact"
            )
        if manifest.model_bytes > self.policy.max_model_bytes:
            reasons.append(
                f"vendor.size: the model is {manifest.model_bytes} bytes, over the policy's "
                f"max_model_bytes {self.policy.max_model_bytes}"
            )
        with self._lock:
            if manifest.job_id in self.jobs:
                reasons.append(f"vendor.duplicate: job {manifest.job_id} was already submitted")
        return manifest, reasons

    def check_model(self, manifest: VendorManifest, plaintext: bytearray) -> list[str]:
        """The checks of the opened model: the one the manifest names (digest, size), a safetensors file."""
        if len(plaintext) != manifest.model_bytes or hashlib.sha256(plaintext).digest() != manifest.model_sha256:
            return ["vendor.digest: the artefact is not the model the manifest names (digest or size)"]
        try:
            decode_tensors(plaintext)
        except UpdateFormatError as exc:
            return [f"vendor.model: not a safetensors model: {exc}"]
        return []

    def check_submission(self, request: pb.VendorSubmission) -> tuple[VendorManifest, bytearray | None, list[str]]:
        """Every check of a one-message submission: (manifest, plaintext when it opened, failed checks)."""
        manifest, reasons = self.check_signed(request)
        if reasons:
            return manifest, None, reasons  # nothing is decrypted for an unauthenticated submitter
        plaintext = None
        try:
            content_key = self.keys.open_sealed_box(bytes(request.artefact.sealed_key))
            plaintext = decrypt_artefact(_artefact(request.artefact), content_key, max_bytes=manifest.model_bytes)
        except (EnclaveKeyError, VendorError) as exc:
            reasons.append(f"vendor.artefact: {exc}")
        if plaintext is not None:
            reasons += self.check_model(manifest, plaintext)
        return manifest, plaintext, reasons

    def submit(self, request: pb.VendorSubmission, refuse: Any) -> pb.VendorSubmitResponse:
        if len(request.artefact.chunks) > MAX_INLINE_MODEL_BYTES // ARTEFACT_CHUNK + 1:
            reasons = ["vendor.size: more chunks than one message carries (use VendorUpload)"]
            refuse(vendor="?", reasons=reasons)
            return pb.VendorSubmitResponse(accepted=False, reasons=reasons)
        manifest, plaintext, reasons = self.check_submission(request)
        if reasons:
            if plaintext is not None:
                plaintext[:] = bytes(len(plaintext))
            refuse(vendor=_short(manifest.vendor, 64), reasons=[_short(r, 300) for r in reasons])
            return pb.VendorSubmitResponse(accepted=False, reasons=reasons)
        assert plaintext is not None
        try:
            return self.accept(manifest, request, plaintext, refuse)
        finally:
            plaintext[:] = bytes(len(plaintext))  # the plaintext lives no longer than this

    def accept(
        self, manifest: VendorManifest, request: pb.VendorSubmission, plaintext: bytearray, refuse: Any
    ) -> pb.VendorSubmitResponse:
        """Re-encrypt a checked model under a fresh content key, log the submission, keep the job.
        The caller wipes ``plaintext``."""
        key = new_content_key()
        artefact = encrypt_artefact(plaintext, key)
        stored = sum(len(c) for c in artefact.chunks)
        ticket = self.memory.reserve(manifest.vendor, stored)
        if isinstance(ticket, str):
            reasons = [f"vendor.memory: {ticket}"]
            refuse(vendor=manifest.vendor, reasons=reasons)
            return pb.VendorSubmitResponse(accepted=False, reasons=reasons)
        job = Job(manifest, bytes(request.manifest), artefact, key, datetime.now(UTC).isoformat(), memory=ticket)
        with self._lock:
            if manifest.job_id in self.jobs:
                ticket.release()
                return pb.VendorSubmitResponse(accepted=False, reasons=["vendor.duplicate: already submitted"])
            try:
                self.record(
                    "vendor_submission",
                    vendor=manifest.vendor,
                    job=manifest.job_id,
                    manifest=bytes(request.manifest),
                    vendor_public=bytes(request.vendor_public),
                    signature=bytes(request.signature),
                    sealed_key=bytes(request.artefact.sealed_key),
                    header=bytes(request.artefact.header),
                    aggregator_x25519=self.keys.public.x25519,
                    model_sha256=manifest.model_sha256.hex(),
                    entry_point=manifest.entry_point,
                    entry_sha256=manifest.entry_sha256.hex(),
                    sites=list(self.policy.sites),
                )
            except BaseException:
                ticket.release()
                raise
            self.jobs[manifest.job_id] = job
        self.on_submitted(job)
        return pb.VendorSubmitResponse(accepted=True, job_id=manifest.job_id)

    def on_submitted(self, job: Job) -> None:
        """Seal the new job's state (a restart restores it)."""
        self.persist(job)

    def persist(self, job: Job) -> None:
        """Seal a job's state after a change (its artefact once, at submission)."""
        if self.store is None:
            return
        if not (self.store.directory / f"{job.job_id}.artefact").exists():
            self.store.save_artefact(job.job_id, job.artefact.header, job.artefact.chunks)
        self.store.save(job.stored())

    def restore(self) -> list[str]:
        """The jobs sealed by an earlier run of this code, logged (``vendor_restored``) and kept;
        the content keys are re-sealed to each site's new session key when it asks again."""
        if self.store is None:
            return []
        stored = self.store.load()
        if not stored:
            return []
        self.record(
            "vendor_restored",
            jobs=[
                {
                    "job": job.job_id,
                    "vendor": VendorManifest.from_bytes(job.manifest).vendor,
                    "dispatched": sorted(job.dispatched),
                    "reported": sorted(job.results),
                    "missing": job.missing,
                }
                for job in stored
            ],
        )
        with self._lock:
            for item in stored:
                manifest = VendorManifest.from_bytes(item.manifest)
                artefact = SealedArtefact(item.header, item.chunks)
                ticket = self.memory.reserve(manifest.vendor, sum(len(c) for c in item.chunks))
                job = Job(
                    manifest,
                    item.manifest,
                    artefact,
                    item.key,
                    item.submitted,
                    dispatched=set(item.dispatched),
                    results=item.results,
                    memory=ticket if isinstance(ticket, Ticket) else None,
                    missing=item.missing,
                )
                self.jobs[job.job_id] = job
        return [item.job_id for item in stored]

    # --- streamed submission (VendorUpload) ----------------------------------------------------

    async def rpc_upload(self, service: Any, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        """A submission of any size: the signed submission first (checked before anything is
        decrypted or allocated), then its chunks, each authenticated as it arrives into one
        buffer of the manifest's size, reserved in the memory budget; ``upload_timeout`` in all."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.policy.upload_timeout

        def refuse(**fields: Any) -> None:
            service._refused(context, "vendor_refused", **fields)

        def refused(vendor: str, reasons: list[str]) -> pb.VendorSubmitResponse:
            refuse(vendor=_short(vendor, 64), reasons=[_short(r, 300) for r in reasons])
            return pb.VendorSubmitResponse(accepted=False, reasons=reasons)

        first = await service._first(requests, context)
        if not first.HasField("submission"):
            return refused("?", ["vendor.stream: the first message carries no submission"])
        request = first.submission
        manifest, reasons = await loop.run_in_executor(None, self.check_signed, request)
        if reasons:
            return refused(manifest.vendor, reasons)
        # The plaintext buffer and the re-encrypted copy, while the upload runs.
        ticket = self.memory.reserve(manifest.vendor, 2 * manifest.model_bytes)
        if isinstance(ticket, str):
            return refused(manifest.vendor, [f"vendor.memory: {ticket}"])
        buffer = bytearray(manifest.model_bytes)
        try:
            try:
                content_key = self.keys.open_sealed_box(bytes(request.artefact.sealed_key))
                opener = ArtefactOpener(bytes(request.artefact.header), content_key, max_bytes=manifest.model_bytes)
            except (EnclaveKeyError, VendorError) as exc:
                return refused(manifest.vendor, [f"vendor.artefact: {exc}"])
            message: Any = first if first.ciphertext else None
            while True:
                if message is None:
                    message = await self._next_message(service, requests, context, deadline, manifest.vendor)
                    if message is None:
                        break
                if message.HasField("submission"):
                    return refused(manifest.vendor, ["vendor.stream: a second submission in one upload"])
                start = opener.received
                try:
                    piece = opener.open(bytes(message.ciphertext), int(message.index))
                except VendorError as exc:
                    return refused(manifest.vendor, [f"vendor.artefact: {exc}"])
                buffer[start : start + len(piece)] = piece
                message = None
            try:
                opener.finish()
            except VendorError as exc:
                return refused(manifest.vendor, [f"vendor.artefact: {exc}"])
            reasons = await loop.run_in_executor(None, self.check_model, manifest, buffer)
            if reasons:
                return refused(manifest.vendor, reasons)
            return await loop.run_in_executor(None, self.accept, manifest, request, buffer, refuse)
        finally:
            buffer[:] = bytes(len(buffer))
            ticket.release()

    async def _next_message(
        self, service: Any, requests: Any, context: grpc.aio.ServicerContext, deadline: float, vendor: str
    ) -> Any:
        timeout = min(service.stall_timeout, deadline - time.monotonic())
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                message = await requests.__anext__()
        except StopAsyncIteration:
            return None
        except TimeoutError:
            if time.monotonic() >= deadline:
                reason = f"vendor.deadline: the upload did not finish within {self.policy.upload_timeout:g} s"
            else:
                reason = f"vendor.deadline: no chunk for {service.stall_timeout:g} s (the upload stalled)"
            service._refused(context, "vendor_refused", vendor=_short(vendor, 64), reasons=[reason])
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, reason)
        if isinstance(message, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the {message.type_name} message does not parse")
        return message

    # --- sites ---------------------------------------------------------------------------------

    def _check_site(self, site_id: str) -> None:
        if site_id not in self.policy.sites:
            raise UpdateRefused(
                f"site {site_id!r} does not evaluate vendor models (the task's vendor policy names "
                f"{', '.join(self.policy.sites)})",
                grpc.StatusCode.PERMISSION_DENIED,
            )

    def jobs_for(self, site_id: str, site_x25519: bytes) -> pb.VendorJobsResponse:
        """The jobs this site has not reported yet, each content key sealed to its attested key."""
        self._check_site(site_id)
        response = pb.VendorJobsResponse()
        with self._lock:
            for job in self.jobs.values():
                if site_id in job.results or job.closed:
                    continue
                if site_id not in job.dispatched:
                    self.record("vendor_dispatch", job=job.job_id, site=site_id, site_x25519=site_x25519)
                    job.dispatched.add(site_id)
                    self.persist(job)
                response.jobs.append(
                    pb.VendorJob(
                        job_id=job.job_id,
                        manifest=job.manifest_bytes,
                        artefact=pb.VendorArtefact(
                            header=job.artefact.header, sealed_key=seal_key(job.key, site_x25519)
                        ),
                        bootstrap=self.policy.bootstrap,
                        chunks=len(job.artefact.chunks),  # fetched with VendorFetch
                    )
                )
        return response

    def chunks_for(self, site_id: str, job_id: str) -> tuple[bytes, ...]:
        """The ciphertext chunks of a job sent to this site (VendorJobs) that it has not reported."""
        self._check_site(site_id)
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or site_id not in job.dispatched:
                raise UpdateRefused(f"no evaluation job {_short(job_id, 40)!r} was sent to this site")
            if site_id in job.results or job.closed:
                raise UpdateRefused(
                    f"site {site_id!r} already reported job {job.job_id}, or the job is closed",
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
            return job.artefact.chunks

    def pending(self, site_id: str) -> int:
        """How many jobs wait for this site's metrics (0 for a site that does not evaluate)."""
        if site_id not in self.policy.sites:
            return 0
        with self._lock:
            return sum(1 for job in self.jobs.values() if site_id not in job.results and not job.closed)

    def accept_metrics(self, site_id: str, report: pb.VendorMetrics, max_weight: float) -> None:
        self._check_site(site_id)
        with self._lock:
            job = self.jobs.get(report.job_id)
            if job is None or site_id not in job.dispatched:
                raise UpdateRefused(f"no evaluation job {_short(report.job_id, 40)!r} was sent to this site")
            if site_id in job.results:
                raise UpdateRefused(
                    f"site {site_id!r} already reported job {job.job_id}", grpc.StatusCode.ALREADY_EXISTS
                )
            if job.closed:
                raise UpdateRefused(
                    f"job {job.job_id} was closed at its report deadline; site {site_id!r} is listed as missing",
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
            result = self._checked_result(report, max_weight)
            digest = hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()
            self.record(
                "vendor_evaluation",
                job=job.job_id,
                vendor=job.manifest.vendor,
                site=site_id,
                examples=int(report.examples),
                result_sha256=digest,
                suppressed=result.get("suppressed"),
                refused=result.get("refused"),
            )
            job.results[site_id] = result
            complete = all(s in job.results for s in self.policy.sites)
            if complete:
                job.missing = []
            self.persist(job)
        if complete:
            self.release_network()

    def _checked_result(self, report: pb.VendorMetrics, max_weight: float) -> dict[str, Any]:
        examples = int(report.examples)
        if report.refused:
            return {"suppressed": f"the site could not evaluate: {_short(report.refused, 200)}", "refused": True}
        if examples > max_weight:
            raise UpdateRefused(
                f"{examples} examples is over this site's max_weight {max_weight:g}", grpc.StatusCode.INVALID_ARGUMENT
            )
        if examples < self.policy.min_examples:
            return {"suppressed": f"fewer than {self.policy.min_examples} examples (small-cell suppression)"}
        if len(report.metrics) > MAX_METRICS or len(report.replicates) > len(VENDOR_METRICS):
            raise UpdateRefused("too many metrics", grpc.StatusCode.INVALID_ARGUMENT)
        metrics = {}
        for name, value in report.metrics.items():
            base = name.split("[", 1)[0]
            if not 0 < len(name) <= MAX_METRIC_NAME or not name.isprintable() or base not in VENDOR_METRICS:
                raise UpdateRefused(
                    f"metric {_short(name, 40)!r} is not one of {VENDOR_METRICS}", grpc.StatusCode.INVALID_ARGUMENT
                )
            if not np.isfinite(value):
                raise UpdateRefused(f"metric {name!r} is not finite", grpc.StatusCode.INVALID_ARGUMENT)
            metrics[name] = float(value)
        replicates = {}
        for name, samples in report.replicates.items():
            values = list(samples.values)
            if name not in VENDOR_METRICS or len(values) > self.policy.bootstrap or not np.all(np.isfinite(values)):
                raise UpdateRefused(
                    f"replicates of {_short(name, 40)!r}: a metric of {VENDOR_METRICS}, at most "
                    f"{self.policy.bootstrap} finite values",
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
            replicates[name] = [float(v) for v in values]
        return {"examples": examples, "metrics": metrics, "replicates": replicates}

    # --- reports -------------------------------------------------------------------------------

    def _row(self, job: Job) -> dict[str, Any]:
        row = job_row(job.describe(), job.results, allowed=self.policy.network_metrics)
        row["missing"] = list(job.missing or [])  # sites that had not reported at the report deadline
        return row

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._row(job) for job in self.jobs.values() if job.closed]

    # --- the report deadline ([task.vendors] report_deadline) ----------------------------------

    def deadline(self, job: Job) -> float | None:
        """When a job's report is produced from the sites that reported (unix seconds), if the policy sets one."""
        if self.policy.report_deadline is None:
            return None
        return datetime.fromisoformat(job.submitted).timestamp() + self.policy.report_deadline

    def close_due(self, now: float | None = None) -> list[str]:
        """Close every job whose report deadline passed: log ``vendor_deadline`` (the sites that
        reported and those missing), then release the network's report per the policy."""
        now = time.time() if now is None else now
        closed = []
        with self._lock:
            for job in self.jobs.values():
                due = self.deadline(job)
                if job.closed or due is None or now < due:
                    continue
                reported = sorted(s for s in self.policy.sites if s in job.results)
                missing = sorted(s for s in self.policy.sites if s not in job.results)
                self.record(
                    "vendor_deadline",
                    job=job.job_id,
                    vendor=job.manifest.vendor,
                    deadline=datetime.fromtimestamp(due, UTC).isoformat(),
                    reported=reported,
                    missing=missing,
                )
                job.missing = missing
                self.persist(job)
                closed.append(job.job_id)
        if closed:
            self.release_network()
        return closed

    def start(self, stop: threading.Event | None = None, *, period: float = 1.0) -> threading.Thread | None:
        """Close due jobs every ``period`` seconds in a daemon thread (none without a report deadline)."""
        if self.policy.report_deadline is None:
            return None
        stop = stop or threading.Event()
        self._stop = stop

        def watch() -> None:
            while not stop.wait(period):
                try:
                    self.close_due()
                except Exception:  # noqa: BLE001 - the log refused an entry: the service has fail-stopped
                    return

        thread = threading.Thread(target=watch, name="vendor-deadlines", daemon=True)
        thread.start()
        return thread

    def network_report(self) -> dict[str, Any]:
        return {
            "generated": datetime.now(UTC).isoformat(),
            "min_examples": self.policy.min_examples,
            "metrics": list(self.policy.network_metrics),
            "sites": list(self.policy.sites),
            "vendors": self.rows(),
        }

    def release_network(self) -> None:
        """Log, then write, the network's comparative report (JSON + HTML) of every complete job."""
        report = self.network_report()
        data = json.dumps(report, indent=2, sort_keys=True).encode()
        self.record(
            "vendor_release",
            to="network",
            jobs=[row["job"] for row in report["vendors"]],
            report_sha256=hashlib.sha256(data).hexdigest(),
        )
        self.report_dir.mkdir(parents=True, exist_ok=True)
        for name, content in (("network-report.json", data), ("network-report.html", render_html(report).encode())):
            staged = self.report_dir / (name + ".tmp")
            staged.write_bytes(content)
            staged.replace(self.report_dir / name)

    def vendor_report(self, request: pb.VendorReportRequest) -> pb.VendorReportResponse:
        reasons = []
        vendor, job_id = request.vendor, request.job_id
        key = self.policy.keys.get(vendor) if valid_name(vendor) else None
        if key is None:
            reasons.append(f"vendor.unknown: vendor {_short(vendor, 64)!r} is not in the task's vendor policy")
        else:
            message = report_request_message(
                vendor=vendor,
                job_id=job_id,
                vendor_x25519=bytes(request.vendor_x25519),
                issued_unix_ms=int(request.issued_unix_ms),
                aggregator_ed25519=self.keys.public.ed25519,
            )
            if not verify_enclave_signature(key, bytes(request.signature), message):
                reasons.append("vendor.signature: the request is not signed by the policy's key for this vendor")
            if abs(int(time.time() * 1000) - int(request.issued_unix_ms)) > REPORT_REQUEST_SKEW_MS:
                reasons.append("vendor.fresh: the request was not issued within 5 minutes of now")
        with self._lock:
            job = self.jobs.get(job_id)
            if not reasons and (job is None or job.manifest.vendor != vendor):
                reasons.append(f"vendor.job: vendor {vendor!r} submitted no job {_short(job_id, 40)!r}")
            if reasons:
                return pb.VendorReportResponse(reasons=reasons)
            assert job is not None
            if not job.closed:
                return pb.VendorReportResponse(complete=False)
            row = self._row(job)
        view = vendor_view(row, allowed=self.policy.vendor_metrics, per_site=self.policy.vendor_per_site)
        if row["missing"]:  # closed at the report deadline: which sites (or, without per-site release, how many)
            view["missing"] = row["missing"] if self.policy.vendor_per_site else len(row["missing"])
        data = json.dumps(view, sort_keys=True).encode()
        content_key = new_content_key()
        try:
            sealed_key = seal_key(content_key, bytes(request.vendor_x25519))
        except VendorError as exc:
            return pb.VendorReportResponse(reasons=[f"vendor.key: {exc}"])
        artefact = encrypt_artefact(data, content_key)
        sealed = pb.VendorArtefact(
            header=artefact.header, chunks=list(artefact.chunks), sealed_key=sealed_key
        ).SerializeToString()
        self.record(
            "vendor_release",
            to="vendor",
            vendor=vendor,
            jobs=[job_id],
            report_sha256=hashlib.sha256(data).hexdigest(),
        )
        signature = self.keys.sign(report_response_message(job_id=job_id, vendor=vendor, sealed_report=sealed))
        return pb.VendorReportResponse(complete=True, sealed_report=sealed, signature=signature)

    # --- the RPCs (FederationService delegates here; ``service`` is the FederationService) ------

    async def rpc_submit(self, service: Any, request: pb.VendorSubmission, context: grpc.aio.ServicerContext) -> Any:
        def refuse(**fields: Any) -> None:
            service._refused(context, "vendor_refused", **fields)

        return await asyncio.get_running_loop().run_in_executor(None, self.submit, request, refuse)

    async def rpc_jobs(self, service: Any, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
        session, call, plaintext = await service._open(context, "VendorJobs", request)
        _parse(pb.VendorJobsRequest, plaintext)
        try:
            response = self.jobs_for(session.site_id, session.x25519)
        except UpdateRefused as exc:
            service._record("call_refused", site=session.site_id, method="VendorJobs", reason=_short(str(exc), 300))
            await context.abort(exc.code, _short(str(exc), 300))
        return service._seal(session, "VendorJobs", call, response)

    async def rpc_fetch(self, service: Any, request: pb.Sealed, context: grpc.aio.ServicerContext) -> Any:
        session, _call, plaintext = await service._open(context, "VendorFetch", request)
        try:
            inner = _parse(pb.VendorFetchRequest, plaintext)
            chunks = self.chunks_for(session.site_id, inner.job_id)
        except UpdateRefused as exc:
            service._record("call_refused", site=session.site_id, method="VendorFetch", reason=_short(str(exc), 300))
            await context.abort(exc.code, _short(str(exc), 300))
        for index, chunk in enumerate(chunks):
            service.counters.bytes_out += len(chunk)
            yield pb.VendorChunk(index=index, ciphertext=chunk)

    async def rpc_report_metrics(
        self, service: Any, request: pb.Sealed, context: grpc.aio.ServicerContext
    ) -> pb.Sealed:
        session, call, plaintext = await service._open(context, "VendorReportMetrics", request)
        inner = _parse(pb.VendorMetrics, plaintext)
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, self.accept_metrics, session.site_id, inner, session.max_weight
            )
        except UpdateRefused as exc:
            service._record(
                "call_refused", site=session.site_id, method="VendorReportMetrics", reason=_short(str(exc), 300)
            )
            await context.abort(exc.code, _short(str(exc), 300))
        return service._seal(session, "VendorReportMetrics", call, pb.MetricsAck())

    async def rpc_report(self, service: Any, request: pb.VendorReportRequest, context: grpc.aio.ServicerContext) -> Any:
        response = self.vendor_report(request)
        if response.reasons:
            service._refused(
                context, "vendor_refused", vendor=_short(request.vendor, 64), reasons=list(response.reasons)
            )
        return response


__all__ = ["EvaluationJobs", "Job"]
