"""Reference values a relying party pins: what the aggregator's evidence must show.

``attestfl reference-values snp`` computes the SEV-SNP launch measurement of a guest from the
same inputs the host launches it with (OVMF firmware, optionally a kernel, initrd and kernel
command line measured through OVMF's kernel-hashes table, the vCPU count and type) and prints
a policy snippet for the ``[sev-snp]`` section. The computation is delegated to
``sev-snp-measure`` (the ``reference-values`` extra): a site recomputes the value
independently of the operator, from published inputs, before pinning it.

``--init-data FILE`` adds the Confidential Containers init-data digest the host puts into
HOST_DATA (SHA-256/384/512 of the init-data TOML, truncated or zero-padded to 32 bytes), so a
site can pin the configuration the pod was started with as well.

Exit status: 0 printed; 2 unusable input (missing file, firmware without SEV metadata,
kernel hashes not supported by the firmware) or the extra not installed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .errors import AttestationError
from .files import read_bounded
from .platforms.snp import NAME as SNP
from .platforms.tdx import NAME as TDX
from .policy import Policy

EXIT_OK, EXIT_UNUSABLE = 0, 2
#: QEMU's default guest-features for SNP as sev-snp-measure assumes it (SNPSEV_FEATURES bit 0).
DEFAULT_GUEST_FEATURES = 0x1
VMM_TYPES = ("QEMU", "ec2", "gce")
#: Width of the TEE field that receives the init-data digest, per platform.
INIT_DATA_FIELD_BYTES = {SNP: 32, TDX: 48}
INIT_DATA_ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
MAX_INIT_DATA_BYTES = 1024 * 1024


class ReferenceValueError(AttestationError):
    """The inputs of a reference value are unusable: a missing or unreadable file, firmware
    without the metadata the computation needs, or the computing tool not installed."""


@dataclass(frozen=True)
class SnpLaunchInputs:
    """Everything the SEV-SNP launch measurement depends on; the host must launch with exactly these."""

    ovmf: Path
    vcpus: int
    vcpu_type: str
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    vmm_type: str = "QEMU"
    guest_features: int = DEFAULT_GUEST_FEATURES


@dataclass(frozen=True)
class SnpReferenceValue:
    """A computed launch measurement and the file digests it was computed from."""

    measurement: bytes  # 48 bytes
    inputs: SnpLaunchInputs
    file_sha256: tuple[tuple[str, str], ...]  # (role, sha256 hex) for ovmf, kernel, initrd
    host_data: bytes | None = None  # init-data digest as it appears in HOST_DATA
    init_data_sha256: str | None = None


def _sevsnpmeasure() -> tuple[Any, Any, Any, Any]:
    """sev-snp-measure's ``guest``, ``vcpu_types`` and ``vmm_types`` modules and its ``SevMode``."""
    try:
        from sevsnpmeasure import guest, vcpu_types, vmm_types
        from sevsnpmeasure.sev_mode import SevMode
    except ImportError as exc:
        raise ReferenceValueError(
            "sev-snp-measure is not installed; install the extra: pip install 'attestfl[reference-values]'"
        ) from exc
    return guest, vcpu_types, vmm_types, SevMode


def snp_vcpu_types() -> tuple[str, ...]:
    """The vCPU model names (QEMU ``-cpu``) whose CPUID signature the measurement includes."""
    try:
        _, vcpu_types, _, _ = _sevsnpmeasure()
    except ReferenceValueError:
        return ()
    return tuple(vcpu_types.CPU_SIGS)


#: No kernel, initrd or firmware image hashed for reference values is larger than this.
MAX_IMAGE_BYTES = 4 * 1024**3


def _sha256_file(path: Path, role: str) -> str:
    from .files import open_bounded

    with open_bounded(path, MAX_IMAGE_BYTES, role, ReferenceValueError) as (handle, _size):
        try:
            return hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            raise ReferenceValueError(f"cannot read {role} {path}: {exc.strerror or exc}") from exc


def init_data_digest(text: bytes, platform: str) -> bytes:
    """The value a CoCo host writes into the TEE's init-data field (SNP HOST_DATA, TDX
    MRCONFIGID): the init-data's own ``algorithm`` over the exact TOML bytes, truncated or
    zero-padded to the field's width."""
    if platform not in INIT_DATA_FIELD_BYTES:
        raise ReferenceValueError(f"no init-data field known for platform {platform!r}")
    try:
        document = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ReferenceValueError(f"init-data is not a UTF-8 TOML document: {exc}") from exc
    algorithm = document.get("algorithm")
    if algorithm not in INIT_DATA_ALGORITHMS:
        raise ReferenceValueError(
            f"init-data algorithm must be one of {', '.join(INIT_DATA_ALGORITHMS)}, got {algorithm!r}"
        )
    if document.get("version") != "0.1.0":
        raise ReferenceValueError(f'init-data version must be "0.1.0", got {document.get("version")!r}')
    if not isinstance(document.get("data"), dict):
        raise ReferenceValueError("init-data has no [data] table")
    width = INIT_DATA_FIELD_BYTES[platform]
    digest = INIT_DATA_ALGORITHMS[algorithm](text).digest()
    return digest[:width].ljust(width, b"\x00")


def read_init_data(path: Path) -> bytes:
    return read_bounded(path, MAX_INIT_DATA_BYTES, "init-data", ReferenceValueError)


def compute_snp(inputs: SnpLaunchInputs, init_data: bytes | None = None) -> SnpReferenceValue:
    """Compute the SEV-SNP launch measurement for ``inputs`` with sev-snp-measure."""
    guest, vcpu_types, vmm_types, sev_mode = _sevsnpmeasure()
    if inputs.vcpus < 1:
        raise ReferenceValueError(f"--vcpus must be at least 1, got {inputs.vcpus}")
    if inputs.vcpu_type not in vcpu_types.CPU_SIGS:
        raise ReferenceValueError(f"unknown vCPU type {inputs.vcpu_type!r}; known: {', '.join(vcpu_types.CPU_SIGS)}")
    if inputs.vmm_type not in VMM_TYPES:
        raise ReferenceValueError(f"unknown VMM type {inputs.vmm_type!r}; known: {', '.join(VMM_TYPES)}")
    if (inputs.initrd is not None or inputs.append is not None) and inputs.kernel is None:
        raise ReferenceValueError("--initrd and --append are measured only together with --kernel")
    hashes = [("ovmf", _sha256_file(inputs.ovmf, "OVMF firmware"))]
    if inputs.kernel is not None:
        hashes.append(("kernel", _sha256_file(inputs.kernel, "kernel")))
    if inputs.initrd is not None:
        hashes.append(("initrd", _sha256_file(inputs.initrd, "initrd")))
    try:
        digest = guest.calc_launch_digest(
            sev_mode.SEV_SNP,
            inputs.vcpus,
            vcpu_types.CPU_SIGS[inputs.vcpu_type],
            str(inputs.ovmf),
            str(inputs.kernel) if inputs.kernel is not None else None,
            str(inputs.initrd) if inputs.initrd is not None else None,
            inputs.append,
            inputs.guest_features,
            "",
            vmm_types.VMMType[inputs.vmm_type],
        )
    except RuntimeError as exc:
        # sev-snp-measure's own refusals: no SEV metadata / reset block, no kernel-hashes section.
        hint = (
            "an OVMF built with SEV kernel-hashes support (OvmfPkg/AmdSev, e.g. OVMF.amdsev.fd) is needed "
            "to measure a kernel"
            if "KERNEL_HASHES" in str(exc)
            else "the firmware must be an OVMF build with SEV-SNP metadata"
        )
        raise ReferenceValueError(f"{inputs.ovmf}: cannot compute an SNP measurement: {exc}; {hint}") from exc
    except (ValueError, IndexError, KeyError, AssertionError, OSError) as exc:
        raise ReferenceValueError(
            f"{inputs.ovmf}: not an OVMF image with SEV-SNP metadata ({type(exc).__name__}: {exc})"
        ) from exc
    if len(digest) != 48:
        raise ReferenceValueError(f"sev-snp-measure returned {len(digest)} bytes, expected 48")
    host_data = init_data_digest(init_data, SNP) if init_data is not None else None
    return SnpReferenceValue(
        measurement=bytes(digest),
        inputs=inputs,
        file_sha256=tuple(hashes),
        host_data=host_data,
        init_data_sha256=hashlib.sha256(init_data).hexdigest() if init_data is not None else None,
    )


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in escaped) + '"'


def render_snp_snippet(value: SnpReferenceValue) -> str:
    """A ``[sev-snp]`` policy section pinning ``value``, its inputs recorded as comments."""
    inputs = value.inputs
    lines = [
        "# attestfl reference values: SEV-SNP launch measurement computed with sev-snp-measure from",
    ]
    for role, sha in value.file_sha256:
        lines.append(f"#   {role} sha256 {sha}")
    if inputs.append is not None:
        lines.append(f"#   append {_toml_string(inputs.append)}")
    lines.append(
        f"#   vcpus {inputs.vcpus}, vcpu-type {inputs.vcpu_type}, vmm-type {inputs.vmm_type}, "
        f"guest-features {inputs.guest_features:#x}"
    )
    if value.init_data_sha256 is not None:
        lines.append(f"#   init-data sha256 {value.init_data_sha256} (its digest is HOST_DATA)")
    lines.append("# The host must launch the guest with exactly these inputs; recompute before pinning.")
    lines.append("[sev-snp]")
    lines.append(f'measurement = ["{value.measurement.hex()}"]')
    if value.host_data is not None:
        lines.append(f'host_data = ["{value.host_data.hex()}"]')
    return "\n".join(lines) + "\n"


def add_reference_values_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ref = subparsers.add_parser(
        "reference-values",
        help="compute the values a site pins for the aggregator (launch measurement, init-data digest)",
    )
    ref_sub = ref.add_subparsers(dest="reference_values_command", required=True, metavar="PLATFORM")
    snp = ref_sub.add_parser(
        "snp",
        help="SEV-SNP launch measurement from OVMF [+ kernel, initrd, command line] and vCPUs",
        description="Compute the SEV-SNP launch measurement with sev-snp-measure and print a [sev-snp] "
        "policy snippet. Use exactly the inputs the guest is launched with. "
        "Exit 0: printed; 2: unusable input.",
    )
    snp.add_argument(
        "--ovmf",
        required=True,
        type=Path,
        metavar="FILE",
        help="OVMF firmware with SEV metadata (e.g. an AmdSev build)",
    )
    snp.add_argument(
        "--kernel",
        type=Path,
        metavar="FILE",
        help="kernel measured through OVMF's kernel-hashes table (QEMU kernel-hashes=on)",
    )
    snp.add_argument("--initrd", type=Path, metavar="FILE", help="initrd (with --kernel)")
    snp.add_argument("--append", metavar="CMDLINE", help="kernel command line (with --kernel)")
    snp.add_argument("--vcpus", required=True, type=int, metavar="N", help="number of vCPUs the guest is launched with")
    snp.add_argument(
        "--vcpu-type", required=True, metavar="TYPE", help="QEMU vCPU model, e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa"
    )
    snp.add_argument("--vmm-type", default="QEMU", choices=VMM_TYPES, help="VMM that launches the guest (default QEMU)")
    snp.add_argument(
        "--guest-features",
        default=DEFAULT_GUEST_FEATURES,
        type=lambda s: int(s, 0),
        metavar="HEX",
        help="SEV features enabled in the VMSA (default 0x1, QEMU's)",
    )
    snp.add_argument(
        "--init-data", type=Path, metavar="FILE", help="CoCo init-data TOML: also pin its digest as host_data"
    )
    snp.set_defaults(handler=run_snp)


def run_snp(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    inputs = SnpLaunchInputs(
        ovmf=args.ovmf,
        vcpus=args.vcpus,
        vcpu_type=args.vcpu_type,
        kernel=args.kernel,
        initrd=args.initrd,
        append=args.append,
        vmm_type=args.vmm_type,
        guest_features=args.guest_features,
    )
    try:
        init_data = read_init_data(args.init_data) if args.init_data is not None else None
        value = compute_snp(inputs, init_data)
        snippet = render_snp_snippet(value)
        Policy.from_toml(snippet)  # never print what the policy loader would refuse
    except AttestationError as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    print(snippet, end="", file=out)
    return EXIT_OK
