"""A site's part in vendor evaluation jobs (docs/vendor-evaluation.md): fetch the jobs whose
models the aggregator re-sealed to this site's attested session key, evaluate each in memory on
the site's held-out data with the metric set of :mod:`fedsite.evaluation`, and return the
metrics with bootstrap replicates, sealed under the session.

The model plaintext never touches the disk: the content key is opened by the site's enclave
key, the secretstream is decrypted into memory, its SHA-256 must be the one the vendor signed,
and the model-definition entry point must be the code the vendor pinned (the SHA-256 of its
module's source file as installed here). The entry point is ``build(tensors) -> predict``,
``predict(features) -> class probabilities`` (n x classes).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from enclave.keys import EnclaveKeyError
from fedsite.client import SiteClient
from fedsite.evaluation import MIN_SUBGROUP_EXAMPLES, EvaluationError, evaluate_predictions, metric_set
from protocol.formulas import ProtocolError
from protocol.tensors import UpdateFormatError, decode_tensors
from protocol.vendor import (
    VENDOR_METRICS,
    ArtefactOpener,
    SealedArtefact,
    VendorError,
    VendorManifest,
    decrypt_artefact,
    entry_point_digest,
)
from protocol.wire import federation_pb2 as pb


@dataclass(frozen=True)
class EvaluationData:
    """A site's held-out data for vendor models: features, integer labels, optional subgroups."""

    features: np.ndarray
    labels: np.ndarray
    subgroups: Mapping[str, np.ndarray] = field(default_factory=dict)


def fetch_jobs(client: SiteClient) -> list[pb.VendorJob]:
    session, call, metadata = client._next_call()
    sealed = client.stub.VendorJobs(
        client._sealed(session, "VendorJobs", call, pb.VendorJobsRequest()), metadata=metadata, timeout=client.timeout
    )
    return list(client._open(session, "VendorJobs", call, sealed, pb.VendorJobsResponse).jobs)


def send_metrics(client: SiteClient, report: pb.VendorMetrics) -> None:
    session, call, metadata = client._next_call()
    sealed = client.stub.VendorReportMetrics(
        client._sealed(session, "VendorReportMetrics", call, report), metadata=metadata, timeout=client.timeout
    )
    client._open(session, "VendorReportMetrics", call, sealed, pb.MetricsAck)


#: The largest vendor model a site opens (its plaintext is held in memory, never on disk).
SITE_MAX_MODEL_BYTES = 1 << 30


def fetch_model(
    client: SiteClient, job: pb.VendorJob, content_key: bytes, *, max_bytes: int = SITE_MAX_MODEL_BYTES
) -> bytearray:
    """A streamed job's model (VendorFetch), decrypted chunk by chunk into one buffer of the
    manifest's size: every chunk authentic and in order, the last one final, nothing after it."""
    manifest = VendorManifest.from_bytes(bytes(job.manifest))
    if manifest.model_bytes > max_bytes:
        raise VendorError(f"the vendor model is {manifest.model_bytes} bytes, over this site's {max_bytes}")
    opener = ArtefactOpener(bytes(job.artefact.header), content_key, max_bytes=manifest.model_bytes)
    buffer = bytearray(manifest.model_bytes)
    session, call, metadata = client._next_call()
    stream = client.stub.VendorFetch(
        client._sealed(session, "VendorFetch", call, pb.VendorFetchRequest(job_id=job.job_id)),
        metadata=metadata,
        timeout=client.timeout + manifest.model_bytes / (1 << 20),  # a second per MiB beyond the call timeout
    )
    for chunk in stream:
        start = opener.received
        piece = opener.open(bytes(chunk.ciphertext), int(chunk.index))
        buffer[start : start + len(piece)] = piece
    opener.finish()
    return buffer


def open_model(client: SiteClient, job: pb.VendorJob) -> tuple[VendorManifest, dict[str, np.ndarray]]:
    """The job's model, in memory: the sealed content key opened by this site's enclave key, the
    stream authenticated and decrypted, its digest the one the vendor signed."""
    manifest = VendorManifest.from_bytes(bytes(job.manifest))
    content_key = client.keys.open_sealed_box(bytes(job.artefact.sealed_key))
    if job.chunks:
        plaintext = fetch_model(client, job, content_key)
    else:
        artefact = SealedArtefact(bytes(job.artefact.header), tuple(bytes(c) for c in job.artefact.chunks))
        plaintext = decrypt_artefact(artefact, content_key, max_bytes=manifest.model_bytes)
    if hashlib.sha256(plaintext).digest() != manifest.model_sha256:
        raise VendorError("the model is not the one the vendor signed (digest)")
    try:
        tensors, _metadata = decode_tensors(plaintext)
    except UpdateFormatError as exc:
        raise VendorError(f"the vendor model is not a safetensors file: {exc}") from None
    return manifest, {name: array.copy() for name, array in tensors.items()}


def load_entry_point(manifest: VendorManifest) -> Callable[[dict[str, np.ndarray]], Callable[[np.ndarray], Any]]:
    """The pinned model-definition function, after checking its source is the code the vendor pinned."""
    if entry_point_digest(manifest.entry_point) != manifest.entry_sha256:
        raise VendorError(
            f"the model definition {manifest.entry_point!r} installed here is not the code the vendor pinned "
            "(SHA-256 of its module's source differs)"
        )
    module_name, function = manifest.entry_point.split(":", 1)
    build = getattr(importlib.import_module(module_name), function, None)
    if not callable(build):
        raise VendorError(f"{manifest.entry_point!r} is not a function")
    return build


def bootstrap(probabilities: np.ndarray, labels: np.ndarray, replicates: int, seed: int) -> dict[str, list[float]]:
    """Each metric on ``replicates`` resamples (with replacement) of the site's examples."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {name: [] for name in VENDOR_METRICS}
    for _ in range(replicates):
        index = rng.integers(0, labels.size, labels.size)
        values = metric_set(probabilities[index], labels[index])
        if any(name not in values for name in VENDOR_METRICS):
            continue  # a resample with one class has no AUROC: drop it for every metric alike
        for name in VENDOR_METRICS:
            out[name].append(values[name])
    return {name: values for name, values in out.items() if values}


def evaluate_job(
    client: SiteClient, job: pb.VendorJob, data: EvaluationData, *, min_examples: int = MIN_SUBGROUP_EXAMPLES
) -> pb.VendorMetrics:
    """Evaluate one job; a model or entry point that fails its checks is reported as refused."""
    try:
        manifest, tensors = open_model(client, job)
        predict = load_entry_point(manifest)(tensors)
        probabilities = np.asarray(predict(np.asarray(data.features)), dtype=np.float64)
        labels = np.asarray(data.labels)
        metrics = evaluate_predictions(probabilities, labels, data.subgroups, min_examples=min_examples)
    except (VendorError, EnclaveKeyError, EvaluationError) as exc:
        return pb.VendorMetrics(job_id=job.job_id, refused=str(exc)[:300])
    except (grpc.RpcError, ProtocolError):
        raise  # the model did not arrive (VendorFetch): the job stays pending, nothing is reported
    except Exception as exc:  # noqa: BLE001 - the vendor's pinned code failed: refused with its reason
        reason = f"the model definition failed: {type(exc).__name__}: {exc}"
        return pb.VendorMetrics(job_id=job.job_id, refused=reason[:300])
    seed = int.from_bytes(hashlib.sha256(job.job_id.encode() + client.site_id.encode()).digest()[:8], "big")
    samples = bootstrap(probabilities, labels.astype(np.int64), int(job.bootstrap), seed)
    return pb.VendorMetrics(
        job_id=job.job_id,
        metrics=metrics,
        examples=int(labels.size),
        replicates={name: pb.VendorSamples(values=values) for name, values in samples.items()},
    )


def run_vendor_jobs(client: SiteClient, data: EvaluationData) -> dict[str, dict[str, Any]]:
    """Fetch, evaluate and report every pending job; returns job id -> what was reported."""
    done: dict[str, dict[str, Any]] = {}
    for job in fetch_jobs(client):
        report = evaluate_job(client, job, data)
        send_metrics(client, report)
        done[job.job_id] = {
            "examples": int(report.examples),
            "metrics": dict(report.metrics),
            "refused": report.refused,
        }
    return done


def load_evaluation_data(path: str) -> EvaluationData:
    """A site's held-out data for vendor models: an .npz with ``x`` (n x features), ``y`` (n class
    indices) and optionally ``subgroup_<attribute>`` arrays (n labels each)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            subgroups = {k[len("subgroup_") :]: arrays[k] for k in arrays.files if k.startswith("subgroup_")}
            return EvaluationData(arrays["x"], arrays["y"], subgroups)
    except (KeyError, ValueError) as exc:
        raise VendorError(f"{path}: expected an .npz with arrays x, y and optional subgroup_<name> ({exc})") from None


__all__ = [
    "EvaluationData",
    "bootstrap",
    "evaluate_job",
    "fetch_jobs",
    "fetch_model",
    "load_entry_point",
    "load_evaluation_data",
    "open_model",
    "run_vendor_jobs",
    "send_metrics",
]
