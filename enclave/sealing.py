"""Sealing keys: a key that only the same measured code on the same platform can derive.

* SEV-SNP hardware: ``SNP_GET_DERIVED_KEY`` on ``/dev/sev-guest``. The firmware derives the
  key from the chip's VCEK root and the guest fields we select: the launch MEASUREMENT and the
  guest POLICY (so other code, or the same code launched with debugging, gets another key).
* Simulated TEE: HKDF-SHA256 over a random root secret kept in the simulated TEE's directory
  (standing in for the chip's fused secret) with the launch measurement as salt. It protects
  against nothing a host can do to that directory; it exercises the same checkpoint code.
* TDX has no local sealing key. A TDX aggregator obtains its checkpoint key from a key broker
  that releases it only against TDX evidence with the pinned MRTD/RTMRs (e.g. Trustee's KBS);
  without one it starts fresh on restart (see docs/protocol.md).
"""

from __future__ import annotations

import abc
import ctypes
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from attestation.errors import AttestflError
from attestation.platforms.snp import NAME as SNP

from .sev_guest import DEVICE, MSG_VERSION, SnpGuestRequestIoctl, _iowr, _system_ioctl

SEALING_LABEL = b"attestfl/v1/sealing-key\x00"
SIMULATED_ROOT_FILE = "sealing-root.key"

#: SNP_GET_DERIVED_KEY guest_field_select bits (SEV-SNP ABI, MSG_KEY_REQ).
FIELD_GUEST_POLICY = 1 << 0
FIELD_IMAGE_ID = 1 << 1
FIELD_FAMILY_ID = 1 << 2
FIELD_MEASUREMENT = 1 << 3
FIELD_GUEST_SVN = 1 << 4
FIELD_TCB_VERSION = 1 << 5


class SealingError(AttestflError):
    """No sealing key can be derived here."""


def _read_root(path: Path) -> bytes:
    from attestation.errors import AttestationError
    from attestation.files import read_bounded

    try:
        return read_bounded(path, 64, "simulated sealing root", SealingError)
    except AttestationError as exc:
        raise SealingError(str(exc)) from None


def _create_root(path: Path) -> None:
    """A new random root at ``path`` unless one is there. Written beside it and hard-linked into
    place, so that a process starting at the same moment sees no file or the whole 32 bytes, never
    an empty one; the first link wins and the others keep the winner's root."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
        os.chmod(temporary, 0o600)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)


class SealingKeySource(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    def key(self, purpose: bytes) -> bytes:
        """A 32-byte key for ``purpose``, bound to this platform and measured code."""


class SimulatedSealingKey(SealingKeySource):
    name = "simulated"

    def __init__(self, directory: str | Path, measurement: bytes) -> None:
        self.path = Path(directory) / SIMULATED_ROOT_FILE
        self.measurement = bytes(measurement)
        try:
            if not self.path.exists():
                _create_root(self.path)
            self._root = _read_root(self.path)
        except OSError as exc:
            raise SealingError(f"cannot read the simulated sealing root {self.path}: {exc.strerror or exc}") from exc
        if len(self._root) != 32:
            raise SealingError(f"{self.path} is not a 32-byte simulated sealing root")

    def key(self, purpose: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=self.measurement, info=SEALING_LABEL + purpose).derive(
            self._root
        )


class SnpDerivedKeyReq(ctypes.Structure):
    """``struct snp_derived_key_req`` of linux/sev-guest.h (32 bytes)."""

    _fields_ = [
        ("root_key_select", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint32),
        ("guest_field_select", ctypes.c_uint64),
        ("vmpl", ctypes.c_uint32),
        ("guest_svn", ctypes.c_uint32),
        ("tcb_version", ctypes.c_uint64),
    ]


class SnpDerivedKeyResp(ctypes.Structure):
    """``struct snp_derived_key_resp``: the firmware's MSG_KEY_RSP (status, reserved, key)."""

    _fields_ = [("data", ctypes.c_uint8 * 64)]


SNP_GET_DERIVED_KEY = _iowr("S", 0x1, ctypes.sizeof(SnpGuestRequestIoctl))


def derived_key_request(vmpl: int = 0, fields: int = FIELD_MEASUREMENT | FIELD_GUEST_POLICY) -> SnpDerivedKeyReq:
    request = SnpDerivedKeyReq()
    request.root_key_select = 0  # the VCEK-derived root (chip-unique)
    request.guest_field_select = fields
    request.vmpl = vmpl
    return request


class SnpSealingKey(SealingKeySource):
    """``SNP_GET_DERIVED_KEY``: a chip-unique key mixed with the measurement and guest policy."""

    name = "sev-snp-derived-key"

    def __init__(self, *, root: str | Path = "/", vmpl: int = 0, ioctl=None) -> None:  # noqa: ANN001
        self.device = Path(root) / DEVICE
        self.vmpl = vmpl
        self._ioctl = ioctl or _system_ioctl

    def key(self, purpose: bytes) -> bytes:
        request = derived_key_request(self.vmpl)
        response = SnpDerivedKeyResp()
        argument = SnpGuestRequestIoctl()
        argument.msg_version = MSG_VERSION
        argument.req_data = ctypes.addressof(request)
        argument.resp_data = ctypes.addressof(response)
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as exc:
            raise SealingError(f"cannot open {self.device}: {exc.strerror or exc}") from exc
        try:
            self._ioctl(fd, SNP_GET_DERIVED_KEY, argument)
        except OSError as exc:
            raise SealingError(
                f"SNP_GET_DERIVED_KEY failed: {exc.strerror or exc} (firmware error {argument.fw_error:#x})"
            ) from exc
        finally:
            os.close(fd)
        data = bytes(response.data)
        status = int.from_bytes(data[:4], "little")
        if status != 0:
            raise SealingError(f"the firmware refused the derived key (status {status:#x})")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SEALING_LABEL + purpose).derive(data[32:64])


def simulated_launch_measurement(attester: object) -> bytes | None:
    """The launch measurement of a simulated attester (SNP MEASUREMENT or TDX MRTD: its
    ``launch_measurement``), else None."""
    measurement = getattr(attester, "launch_measurement", None)
    return measurement if isinstance(measurement, bytes) else None


def sealing_key_for(attester: object, simulated_dir: str | Path | None) -> SealingKeySource | None:
    """The sealing key source of the TEE ``attester`` runs in: the simulated sealing root bound
    to the simulated launch measurement, SNP's derived key on SEV-SNP hardware, or ``None``
    where the platform has no local sealing key (TDX: use a key broker)."""
    measurement = simulated_launch_measurement(attester)
    if str(getattr(attester, "name", "")).startswith("simulated-"):
        if simulated_dir is None or measurement is None:
            raise SealingError("the simulated TEE needs its directory and launch measurement to derive a sealing key")
        return SimulatedSealingKey(simulated_dir, measurement)
    from .sev_guest import SevGuestAttester

    platform = attester.platform() if hasattr(attester, "platform") else None
    if isinstance(attester, SevGuestAttester) or platform == SNP:
        return SnpSealingKey()
    return None
