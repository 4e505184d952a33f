"""Evidence through ``/dev/sev-guest`` ``SNP_GET_EXT_REPORT``: SEV-SNP guests on kernels
without configfs-tsm.

Structures, exactly as include/uapi/linux/sev-guest.h lays them out (x86-64, natural
alignment, little-endian):

* ``snp_report_req`` (96 bytes): u8 user_data[64]; u32 vmpl; u8 rsvd[28];
* ``snp_ext_report_req`` (112 bytes): snp_report_req data; u64 certs_address (at 96);
  u32 certs_len (at 104); 4 bytes of tail padding;
* ``snp_report_resp`` (4000 bytes): the firmware's MSG_REPORT_RSP: u32 status,
  u32 report_size, 24 reserved bytes, then the 1184-byte attestation report;
* ``snp_guest_request_ioctl`` (32 bytes): u8 msg_version (at 0, must be 1); u64 req_data
  (at 8); u64 resp_data (at 16); u64 exitinfo2 (at 24) = u32 fw_error, u32 vmm_error.

``SNP_GET_EXT_REPORT = _IOWR('S', 0x2, struct snp_guest_request_ioctl)`` = 0xC0205302.
The certificate buffer must be page-aligned and a multiple of the page size. When it is
too small the ioctl fails with EIO, ``vmm_error`` = ``SNP_GUEST_VMM_ERR_INVALID_LEN`` and
the kernel writes the size needed (bytes, whole pages) into ``certs_len``: we retry once
with a buffer that large. ``SNP_GUEST_VMM_ERR_BUSY`` (the host is throttling) is retried
a few times.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from attestation.errors import EvidenceFormatError
from attestation.platforms.snp import NAME as SNP
from attestation.platforms.snp.abi import parse_cert_table

from .interface import Attester, AttesterError, CpuEvidence, check_report_data

DEVICE = "dev/sev-guest"
PAGE_SIZE = 4096
MSG_VERSION = 1
SNP_GUEST_VMM_ERR_INVALID_LEN = 1
SNP_GUEST_VMM_ERR_BUSY = 2
REPORT_RESPONSE_HEADER = 32
REPORT_SIZE = 1184
DEFAULT_CERTS_LEN = 4 * PAGE_SIZE
MAX_CERTS_LEN = 64 * 1024
BUSY_RETRIES = 5

_IOC_WRITE, _IOC_READ = 1, 2


def _iowr(kind: str, number: int, size: int) -> int:
    return ((_IOC_READ | _IOC_WRITE) << 30) | (size << 16) | (ord(kind) << 8) | number


class SnpReportReq(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32), ("rsvd", ctypes.c_uint8 * 28)]


class SnpExtReportReq(ctypes.Structure):
    _fields_ = [("data", SnpReportReq), ("certs_address", ctypes.c_uint64), ("certs_len", ctypes.c_uint32)]


class SnpReportResp(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint8 * 4000)]


class _Errors(ctypes.Structure):
    _fields_ = [("fw_error", ctypes.c_uint32), ("vmm_error", ctypes.c_uint32)]


class _ExitInfo(ctypes.Union):
    _anonymous_ = ("errors",)
    _fields_ = [("exitinfo2", ctypes.c_uint64), ("errors", _Errors)]


class SnpGuestRequestIoctl(ctypes.Structure):
    _anonymous_ = ("exit",)
    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exit", _ExitInfo),
    ]


SNP_GET_REPORT = _iowr("S", 0x0, ctypes.sizeof(SnpGuestRequestIoctl))
SNP_GET_EXT_REPORT = _iowr("S", 0x2, ctypes.sizeof(SnpGuestRequestIoctl))

#: ``ioctl(fd, request, buffer)`` as :func:`fcntl.ioctl` with a mutable buffer.
IoctlFunction = Callable[[int, int, ctypes.Structure], int]


class SevGuestError(AttesterError):
    """The SEV guest driver refused the request."""


def sev_guest_available(root: str | Path = "/") -> bool:
    return (Path(root) / DEVICE).exists()


def _system_ioctl(fd: int, request: int, buffer: ctypes.Structure) -> int:
    import fcntl

    return fcntl.ioctl(fd, request, buffer, True)


class PageBuffer:
    """A page-aligned, page-multiple buffer for the certificate table (anonymous mmap)."""

    def __init__(self, size: int) -> None:
        self.size = max(PAGE_SIZE, -(-size // PAGE_SIZE) * PAGE_SIZE)
        self.memory = mmap.mmap(-1, self.size)
        self._view = (ctypes.c_char * self.size).from_buffer(self.memory)
        self.address = ctypes.addressof(self._view)

    def read(self) -> bytes:
        return bytes(self._view)

    def close(self) -> None:
        del self._view
        self.memory.close()


def build_request(
    user_data: bytes, vmpl: int, certs: PageBuffer | None, response: SnpReportResp
) -> tuple[SnpGuestRequestIoctl, SnpExtReportReq]:
    """The ioctl argument and the extended report request it points to."""
    request = SnpExtReportReq()
    ctypes.memmove(request.data.user_data, user_data, 64)
    request.data.vmpl = vmpl
    request.certs_address = certs.address if certs is not None else 0
    request.certs_len = certs.size if certs is not None else 0
    argument = SnpGuestRequestIoctl(
        msg_version=MSG_VERSION, req_data=ctypes.addressof(request), resp_data=ctypes.addressof(response)
    )
    return argument, request


def report_from_response(response: bytes) -> bytes:
    """The attestation report from MSG_REPORT_RSP (status, report_size, reserved, report)."""
    status, size = struct.unpack_from("<II", response, 0)
    if status != 0:
        raise SevGuestError(f"the SEV firmware refused the report request (MSG_REPORT_RSP status {status:#x})")
    if size != REPORT_SIZE:
        raise SevGuestError(f"MSG_REPORT_RSP report_size is {size}, expected {REPORT_SIZE}")
    return bytes(response[REPORT_RESPONSE_HEADER : REPORT_RESPONSE_HEADER + REPORT_SIZE])


class SevGuestAttester(Attester):
    """The ``/dev/sev-guest`` backend (SEV-SNP only). ``vmpl``: the VMPL the report is
    requested for (0..3). ``ioctl`` is the system call (tests give a fake kernel)."""

    name = "sev-guest"

    def __init__(self, *, root: str | Path = "/", vmpl: int = 0, ioctl: IoctlFunction | None = None) -> None:
        if not 0 <= vmpl <= 3:
            raise SevGuestError(f"vmpl must be 0..3, got {vmpl}")
        self.device = Path(root) / DEVICE
        self.vmpl = vmpl
        self._ioctl = ioctl or _system_ioctl

    def evidence(self, report_data: bytes) -> CpuEvidence:
        report_data = check_report_data(report_data)
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as exc:
            raise SevGuestError(f"cannot open {self.device}: {exc.strerror or exc}") from exc
        try:
            report, table = self._extended_report(fd, report_data)
        finally:
            os.close(fd)
        certificates: tuple[bytes, ...] = ()
        if table and any(table[:16]):
            try:
                entries = parse_cert_table(table)
            except EvidenceFormatError as exc:
                raise SevGuestError(f"the host's certificate table is malformed: {exc}") from exc
            certificates = tuple(entries[name] for name in ("vcek", "vlek", "ask", "ark") if name in entries)
        return CpuEvidence(SNP, report, certificates, source="sev-guest")

    def _extended_report(self, fd: int, report_data: bytes) -> tuple[bytes, bytes]:
        certs_len = DEFAULT_CERTS_LEN
        resized = False
        busy = 0
        while True:
            certs = PageBuffer(certs_len)
            response = SnpReportResp()
            argument, request = build_request(report_data, self.vmpl, certs, response)
            try:
                try:
                    self._ioctl(fd, SNP_GET_EXT_REPORT, argument)
                except OSError as exc:
                    if exc.errno == errno.EIO and argument.vmm_error == SNP_GUEST_VMM_ERR_INVALID_LEN and not resized:
                        needed = request.certs_len
                        if not 0 < needed <= MAX_CERTS_LEN:
                            raise SevGuestError(
                                f"the host needs a {needed}-byte certificate buffer (limit {MAX_CERTS_LEN})"
                            ) from exc
                        certs_len, resized = needed, True
                        continue
                    if exc.errno == errno.EIO and argument.vmm_error == SNP_GUEST_VMM_ERR_BUSY and busy < BUSY_RETRIES:
                        busy += 1
                        time.sleep(0.01 * 2**busy)
                        continue
                    raise SevGuestError(
                        f"SNP_GET_EXT_REPORT failed: {exc.strerror or exc} "
                        f"(fw_error {argument.fw_error:#x}, vmm_error {argument.vmm_error:#x})"
                    ) from exc
                return report_from_response(bytes(response.data)), certs.read()
            finally:
                certs.close()
