"""The attester interface: one call, ``evidence(report_data)``, for every kind of TEE.

Backends:

* :class:`enclave.configfs_tsm.ConfigfsTsmAttester` — Linux configfs-tsm (kernel >= 6.7),
  SEV-SNP and TDX alike;
* :class:`enclave.sev_guest.SevGuestAttester` — ``/dev/sev-guest`` ``SNP_GET_EXT_REPORT``
  for older SNP kernels;
* :class:`enclave.simulated.attester.SimulatedSnpAttester` and
  :class:`~enclave.simulated.attester.SimulatedTdxAttester` — the simulated TEE.

GPU evidence has its own, smaller interface (:class:`GpuAttester`): the NVML backend
(:mod:`enclave.nvidia_gpu`) and the simulated GPU. :func:`make_bundle` puts the pieces
together: it derives report_data from the enclave's keys and the verifier's nonce, asks
the CPU attester for evidence, derives the GPU nonce from the same report_data, and
returns an :class:`~attestation.abi.bundle.EvidenceBundle`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from attestation.abi.bundle import EvidenceBundle, GpuPart
from attestation.binding import REPORT_DATA_SIZE, gpu_nonce_for
from attestation.errors import AttestflError

from .keys import EnclaveKeys

TEE_CHOICES = ("auto", "sev-snp", "tdx", "simulated-snp", "simulated-tdx")


class AttesterError(AttestflError):
    """Evidence could not be collected (no TEE, an interface error, a refused request)."""


class NoTeeError(AttesterError):
    """No supported TEE interface is present on this machine."""


@dataclass(frozen=True)
class CpuEvidence:
    """What a CPU attester returns: the bundle's CPU part."""

    platform: str  # "sev-snp" or "tdx"
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
        created=now or datetime.now(timezone.utc),
        certificates=cpu.certificates,
        collateral=dict(cpu.collateral),
        gpu=gpu_part,
    )


def detect_attester(root: str | Path = "/", *, tee: str = "auto") -> Attester:
    """The hardware backend for this machine: configfs-tsm when the kernel offers it, else
    ``/dev/sev-guest``; :class:`NoTeeError` (saying what was looked for) when neither is there.

    ``root`` prefixes every path (tests run the real code against a fake tree).
    ``tee`` ``"sev-snp"`` or ``"tdx"`` requires that platform.
    """
    from .configfs_tsm import ConfigfsTsmAttester, configfs_tsm_available
    from .sev_guest import SevGuestAttester, sev_guest_available

    if tee not in ("auto", "sev-snp", "tdx"):
        raise AttesterError(f"detect_attester: tee must be auto, sev-snp or tdx, got {tee!r}")
    looked = []
    if configfs_tsm_available(root):
        attester = ConfigfsTsmAttester(root=root)
        if tee == "auto" or attester.platform() == tee:
            return attester
        looked.append(f"configfs-tsm (provider {attester.provider()} is not {tee})")
    else:
        looked.append("configfs-tsm (no /sys/kernel/config/tsm/report)")
    if tee in ("auto", "sev-snp"):
        if sev_guest_available(root):
            return SevGuestAttester(root=root)
        looked.append("/dev/sev-guest (absent)")
    raise NoTeeError(
        "no TEE found: looked for " + "; ".join(looked)
        + ". On a machine without SEV-SNP or TDX use --tee simulated-snp or simulated-tdx with --simulated-dir."
    )


def open_attester(tee: str, *, simulated_dir: str | Path | None = None, **simulated_options: object) -> Attester:
    """The attester a ``--tee`` / ``tee =`` choice names: the simulated TEE in ``simulated_dir``
    (``simulated_options`` such as ``config``, ``measurement`` or ``debug`` go to it), or the
    hardware backend :func:`detect_attester` finds. Simulated options with hardware are an error."""
    if tee not in TEE_CHOICES:
        raise AttesterError(f"unknown TEE {tee!r}; expected one of {', '.join(TEE_CHOICES)}")
    if tee.startswith("simulated-"):
        if simulated_dir is None:
            raise AttesterError(f"{tee} needs a simulated TEE directory (--simulated-dir, or simulated_dir in the configuration): the simulated root of trust")
        from .simulated.attester import SimulatedSnpAttester, SimulatedTdxAttester

        cls = SimulatedSnpAttester if tee == "simulated-snp" else SimulatedTdxAttester
        return cls(simulated_dir, **simulated_options)  # type: ignore[arg-type]
    given = sorted(name for name, value in simulated_options.items() if value)
    if given:
        raise AttesterError(f"the option(s) {', '.join(given)} apply to the simulated TEE only (hardware measures itself)")
    return detect_attester(tee=tee)

