"""The simulated TEE behind the :class:`~enclave.attester.Attester` interface.

``SimulatedTdxAttester`` and ``SimulatedSnpAttester`` load (or create) the simulated
PKIs persisted in a directory, "launch" a guest whose measurement is
:func:`enclave.measure.measure` of the running code (unless one is given), and then
answer ``evidence(report_data)`` with byte-exact hardware formats. TDX evidence comes
with simulated Intel collateral (issued at launch, or at ``collateral_issued``), SNP
evidence with the VCEK/ASK/ARK of the simulated certificate table.
``SimulatedGpuAttester`` answers GPU requests with the simulated NVIDIA GPU.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from attestation.platforms.snp import NAME as SNP
from attestation.platforms.tdx import NAME as TDX

from ..interface import Attester, CpuEvidence, GpuAttester, GpuEvidence, check_report_data
from ..measure import measure
from . import SimulatedTeeError
from .collateral import simulated_collateral
from .pki import SimulatedPki, load_or_create
from .snp import AMD_CRL_FILE, GuestOptions, SimulatedSnpFirmware, simulated_amd_crl
from .tdx import SimulatedTdxQuoter, TdOptions


def _config_field(config: bytes | None, size: int) -> bytes:
    """HOST_DATA (SNP, 32 bytes: SHA-256) or MRCONFIGID (TDX, 48 bytes: SHA-384) of a launch with
    ``config`` (the configuration bundle, enclave.config_bundle), as a host binds it on hardware;
    zeros without one."""
    if config is None:
        return bytes(size)
    return (hashlib.sha256 if size == 32 else hashlib.sha384)(config).digest()


def _launch_measurement(measurement: bytes | None, config: bytes | None) -> bytes:
    if measurement is not None:
        if len(measurement) != 48:
            raise SimulatedTeeError("the measurement must be 48 bytes")
        return measurement
    return measure(config).digest


class SimulatedTdxAttester(Attester):
    """A simulated TD. ``debug``: launch with TD attributes DEBUG; ``measurement``: MRTD
    (default: the measurement of the running code and ``config``); ``tcb_status``: the
    status the simulated TCB info gives the platform; ``collateral``: ship collateral."""

    name = "simulated-tdx"

    def __init__(
        self,
        directory: str | Path,
        *,
        debug: bool = False,
        measurement: bytes | None = None,
        config: bytes | None = None,
        collateral: bool = True,
        collateral_issued: dt.datetime | None = None,
        tcb_status: str = "UpToDate",
        tee_tcb_svn: bytes | None = None,
    ) -> None:
        self.pki: SimulatedPki = load_or_create(directory)
        self.quoter = SimulatedTdxQuoter(self.pki)
        config_id = _config_field(config, 48)
        options = TdOptions(mr_td=_launch_measurement(measurement, config), debug=debug, mr_config_id=config_id)
        if tee_tcb_svn is not None:
            options = TdOptions(mr_td=options.mr_td, debug=debug, tee_tcb_svn=tee_tcb_svn, mr_config_id=config_id)
        self.options = options
        self.collateral = simulated_collateral(self.pki, collateral_issued, tcb_status).files if collateral else {}

    @property
    def launch_measurement(self) -> bytes:
        """MRTD."""
        return self.options.mr_td

    def evidence(self, report_data: bytes) -> CpuEvidence:
        quote = self.quoter.quote(check_report_data(report_data), self.options)
        return CpuEvidence(TDX, quote, (), dict(self.collateral), source=self.name)


class SimulatedSnpAttester(Attester):
    """A simulated SEV-SNP guest. ``debug``: guest policy DEBUG (bit 19); ``measurement``:
    MEASUREMENT (default: the measurement of the running code and ``config``); ``crl``:
    ship a simulated AMD CRL (issued at launch, or at ``crl_issued``) as collateral."""

    name = "simulated-snp"

    def __init__(
        self,
        directory: str | Path,
        *,
        debug: bool = False,
        measurement: bytes | None = None,
        config: bytes | None = None,
        vmpl: int = 0,
        tcb: dict[str, int] | None = None,
        crl: bool = True,
        crl_issued: dt.datetime | None = None,
    ) -> None:
        self.pki: SimulatedPki = load_or_create(directory)
        self.firmware = SimulatedSnpFirmware(self.pki)
        self.options = GuestOptions(
            measurement=_launch_measurement(measurement, config),
            debug=debug,
            vmpl=vmpl,
            tcb=tcb,
            host_data=_config_field(config, 32),
        )
        self.collateral = {AMD_CRL_FILE: simulated_amd_crl(self.pki, crl_issued)} if crl else {}

    @property
    def launch_measurement(self) -> bytes:
        """MEASUREMENT."""
        return self.options.measurement

    def evidence(self, report_data: bytes) -> CpuEvidence:
        report = self.firmware.report(check_report_data(report_data), self.options)
        return CpuEvidence(SNP, report, self.firmware.certificates, dict(self.collateral), source=self.name)


class SimulatedGpuAttester(GpuAttester):
    """The simulated NVIDIA GPU whose PKI lives in ``directory`` (created on first use)."""

    name = "simulated-gpu"

    def __init__(self, directory: str | Path) -> None:
        from .gpu import load_or_create_gpu_pki

        self.pki = load_or_create_gpu_pki(directory)

    def evidence(self, nonce: bytes) -> GpuEvidence:
        from .gpu import simulated_gpu_evidence

        evidence, chain = simulated_gpu_evidence(nonce, self.pki)
        return GpuEvidence(evidence, chain)
