"""The attester interface: one call, ``evidence(report_data)``, for every kind of TEE, and
:func:`make_bundle`, which puts CPU and GPU evidence together.

:func:`make_bundle` derives report_data from the enclave's keys and the verifier's nonce, asks
the CPU attester for evidence, derives the GPU nonce from the same report_data, and returns
an :class:`~attestation.bundle_abi.EvidenceBundle`. The backends
(:mod:`enclave.configfs_tsm`, :mod:`enclave.sev_guest`, :mod:`enclave.simulated.attester`,
:mod:`enclave.nvidia_gpu`) implement this interface; :mod:`enclave.attester` finds and opens
them. This module imports no backend.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from attestation.binding import REPORT_DATA_SIZE, gpu_nonce_for
from attestation.bundle_abi import EvidenceBundle, GpuPart
from attestation.errors import AttestflError

from .keys import EnclaveKeys


class AttesterError(AttestflError):
    """Evidence could not be collected (no TEE, an interface error, a refused request)."""


class NoTeeError(AttesterError):
    """No supported TEE interface is present on this machine."""


@dataclass(frozen=True)
class CpuEvidence:
    """What a CPU attester returns: the bundle's CPU part."""

    #: The registered platform of the evidence (a CPU platform: it binds report_data).
    platform: str
    evidence: bytes
    certificates: tuple[bytes, ...] = ()
    collateral: Mapping[str, bytes] = field(default_factory=dict)
    #: The backend that produced it ("configfs-tsm", "sev-guest", "simulated-snp", ...).
    source: str = ""


@dataclass(frozen=True)
class GpuEvidence:
    """What a GPU attester returns: SPDM evidence and its PEM chain (leaf first)."""

    evidence: bytes
    certificates: bytes


class Attester(abc.ABC):
    """A CPU TEE that can produce evidence carrying 64 bytes of report_data."""

    name: str = "attester"

    @property
    def launch_measurement(self) -> bytes | None:
        """The launch measurement the TEE will report, when the attester knows it before any
        evidence (the simulated TEE: it chose it); None for hardware, which measures itself."""
        return None

    @abc.abstractmethod
    def evidence(self, report_data: bytes) -> CpuEvidence:
        """Hardware (or simulated) evidence whose report_data field is ``report_data``."""


class GpuAttester(abc.ABC):
    name: str = "gpu"

    @abc.abstractmethod
    def evidence(self, nonce: bytes) -> GpuEvidence:
        """GPU evidence for a request carrying ``nonce`` (32 bytes)."""


def check_report_data(report_data: bytes) -> bytes:
    if not isinstance(report_data, (bytes, bytearray)) or len(report_data) != REPORT_DATA_SIZE:
        raise AttesterError(f"report_data must be {REPORT_DATA_SIZE} bytes")
    return bytes(report_data)


def make_bundle(
    attester: Attester,
    keys: EnclaveKeys,
    nonce: bytes,
    *,
    gpu: GpuAttester | None = None,
    now: datetime | None = None,
) -> EvidenceBundle:
    """Evidence for the verifier's ``nonce``, bound to ``keys``, as a bundle."""
    report_data = keys.report_data(nonce)
    cpu = attester.evidence(report_data)
    gpu_part = None
    if gpu is not None:
        gpu_evidence = gpu.evidence(gpu_nonce_for(report_data))
        gpu_part = GpuPart(gpu_evidence.evidence, gpu_evidence.certificates)
    return EvidenceBundle(
        platform=cpu.platform,
        evidence=cpu.evidence,
        keys=keys.public,
        nonce=bytes(nonce),
        created=now or datetime.now(UTC),
        certificates=cpu.certificates,
        collateral=dict(cpu.collateral),
        gpu=gpu_part,
    )
