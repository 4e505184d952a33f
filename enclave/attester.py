"""Finding and opening the attester of this machine: ``--tee`` / ``tee =`` choices, hardware
detection, the simulated TEE.

Backends (each implements :mod:`enclave.interface`):

* :class:`enclave.configfs_tsm.ConfigfsTsmAttester` — Linux configfs-tsm (kernel >= 6.7),
  SEV-SNP and TDX alike;
* :class:`enclave.sev_guest.SevGuestAttester` — ``/dev/sev-guest`` ``SNP_GET_EXT_REPORT``
  for older SNP kernels;
* :class:`enclave.simulated.attester.SimulatedSnpAttester` and
  :class:`~enclave.simulated.attester.SimulatedTdxAttester` — the simulated TEE.

GPU evidence has its own, smaller interface (:class:`GpuAttester`): the NVML backend
(:mod:`enclave.nvidia_gpu`) and the simulated GPU. The interface's names are importable from
here too (:class:`Attester`, :class:`CpuEvidence`, :func:`make_bundle`, ...).
"""

from __future__ import annotations

from pathlib import Path

from attestation.platforms import registry
from attestation.platforms.snp import NAME as SNP
from attestation.platforms.tdx import NAME as TDX

from .configfs_tsm import PROVIDERS, ConfigfsTsmAttester, configfs_tsm_available
from .interface import (
    Attester,
    AttesterError,
    CpuEvidence,
    GpuAttester,
    GpuEvidence,
    NoTeeError,
    check_report_data,
    make_bundle,
)
from .sev_guest import SevGuestAttester, sev_guest_available

#: The simulated TEEs (``--tee`` choice -> the platform whose evidence it emits).
SIMULATED_TEES = {"simulated-snp": SNP, "simulated-tdx": TDX}
#: The registered platforms the hardware backends collect evidence for: configfs-tsm's
#: providers (and ``/dev/sev-guest`` for SEV-SNP), in the registry's order.
HARDWARE_TEES = tuple(name for name in registry.builtin_names() if name in PROVIDERS.values())
TEE_CHOICES = ("auto", *HARDWARE_TEES, *SIMULATED_TEES)


def detect_attester(root: str | Path = "/", *, tee: str = "auto") -> Attester:
    """The hardware backend for this machine: configfs-tsm when the kernel offers it, else
    ``/dev/sev-guest``; :class:`NoTeeError` (saying what was looked for) when neither is there.

    ``root`` prefixes every path (tests run the real code against a fake tree).
    ``tee``, one of :data:`HARDWARE_TEES`, requires that platform.
    """
    if tee != "auto" and tee not in HARDWARE_TEES:
        raise AttesterError(f"detect_attester: tee must be auto or one of {', '.join(HARDWARE_TEES)}, got {tee!r}")
    looked = []
    if configfs_tsm_available(root):
        attester = ConfigfsTsmAttester(root=root)
        if tee == "auto" or attester.platform() == tee:
            return attester
        looked.append(f"configfs-tsm (provider {attester.provider()} is not {tee})")
    else:
        looked.append("configfs-tsm (no /sys/kernel/config/tsm/report)")
    if tee in ("auto", SNP):
        if sev_guest_available(root):
            return SevGuestAttester(root=root)
        looked.append("/dev/sev-guest (absent)")
    raise NoTeeError(
        "no TEE found: looked for "
        + "; ".join(looked)
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
            raise AttesterError(
                f"{tee} needs a simulated TEE directory (--simulated-dir, or simulated_dir in the configuration): "
                "the simulated root of trust"
            )
        from .simulated.attester import SimulatedSnpAttester, SimulatedTdxAttester

        cls = SimulatedSnpAttester if SIMULATED_TEES[tee] == SNP else SimulatedTdxAttester
        return cls(simulated_dir, **simulated_options)  # type: ignore[arg-type]  # options by name, as documented
    given = sorted(name for name, value in simulated_options.items() if value)
    if given:
        raise AttesterError(
            f"the option(s) {', '.join(given)} apply to the simulated TEE only (hardware measures itself)"
        )
    return detect_attester(tee=tee)


__all__ = [
    "HARDWARE_TEES",
    "SIMULATED_TEES",
    "TEE_CHOICES",
    "Attester",
    "AttesterError",
    "CpuEvidence",
    "GpuAttester",
    "GpuEvidence",
    "NoTeeError",
    "check_report_data",
    "detect_attester",
    "make_bundle",
    "open_attester",
]
