"""The /dev/sev-guest backend: ioctl structures byte for byte, and SNP_GET_EXT_REPORT
against a fake kernel (the system call is the boundary; the backend code runs as is)."""

from __future__ import annotations

import ctypes
import errno
import struct
from pathlib import Path

import pytest

from attestation.platforms.snp.abi import parse_report
from attestation.platforms.snp.appraise import appraise_snp
from enclave.sev_guest import (
    PAGE_SIZE,
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    PageBuffer,
    SevGuestAttester,
    SevGuestError,
    SnpExtReportReq,
    SnpGuestRequestIoctl,
    SnpReportReq,
    SnpReportResp,
    build_request,
    report_from_response,
)
from enclave.simulated.pki import load_or_create
from enclave.simulated.snp import GuestOptions, SimulatedSnpFirmware
from enclave_fixtures import MEASUREMENT, now, shared_simulated_dir, trusting

USER_DATA = bytes(range(7, 71))


def test_structure_sizes_offsets_and_request_numbers() -> None:
    assert ctypes.sizeof(SnpReportReq) == 96
    assert ctypes.sizeof(SnpExtReportReq) == 112
    assert SnpExtReportReq.certs_address.offset == 96 and SnpExtReportReq.certs_len.offset == 104
    assert ctypes.sizeof(SnpReportResp) == 4000
    assert ctypes.sizeof(SnpGuestRequestIoctl) == 32
    assert (
        SnpGuestRequestIoctl.req_data.offset,
        SnpGuestRequestIoctl.resp_data.offset,
        SnpGuestRequestIoctl.exitinfo2.offset,
    ) == (8, 16, 24)
    assert (SnpGuestRequestIoctl.fw_error.offset, SnpGuestRequestIoctl.vmm_error.offset) == (24, 28)
    # _IOWR('S', n, struct snp_guest_request_ioctl): dir 3 << 30 | size 32 << 16 | 'S' << 8 | n
    assert SNP_GET_EXT_REPORT == 0xC0205302 and SNP_GET_REPORT == 0xC0205300


def test_request_bytes_are_exactly_the_kernel_layout() -> None:
    certs = PageBuffer(3 * PAGE_SIZE + 1)
    response = SnpReportResp()
    try:
        argument, request = build_request(USER_DATA, 2, certs, response)
        assert certs.size == 4 * PAGE_SIZE and certs.address % PAGE_SIZE == 0
        expected_request = (
            USER_DATA + struct.pack("<I", 2) + bytes(28) + struct.pack("<QI", certs.address, 4 * PAGE_SIZE) + bytes(4)
        )
        assert bytes(request) == expected_request
        expected_argument = (
            bytes([1]) + bytes(7) + struct.pack("<QQQ", ctypes.addressof(request), ctypes.addressof(response), 0)
        )
        assert bytes(argument) == expected_argument
        argument.exitinfo2 = (1 << 32) | 0x16
        assert (argument.vmm_error, argument.fw_error) == (1, 0x16)
        assert bytes(argument)[24:] == struct.pack("<II", 0x16, 1)
    finally:
        certs.close()


class FakeSevGuestKernel:
    """The kernel side of SNP_GET_EXT_REPORT, reading and writing the caller's memory."""

    def __init__(self, firmware: SimulatedSnpFirmware, *, cert_pages: int = 1, busy: int = 0) -> None:
        self.firmware = firmware
        self.needed = cert_pages * PAGE_SIZE
        self.busy = busy
        self.calls: list[tuple[int, int]] = []  # (vmpl, certs_len) per call

    def __call__(self, fd: int, request: int, argument: ctypes.Structure) -> int:
        assert request == SNP_GET_EXT_REPORT
        raw = bytes(argument)
        version, request_address, response_address = struct.unpack_from("<B7xQQ", raw)
        assert version == 1
        request_bytes = ctypes.string_at(request_address, 112)
        user_data, vmpl = request_bytes[:64], struct.unpack_from("<I", request_bytes, 64)[0]
        assert request_bytes[68:96] == bytes(28)
        certs_address, certs_len = struct.unpack_from("<QI", request_bytes, 96)
        self.calls.append((vmpl, certs_len))
        if certs_len % PAGE_SIZE or certs_address % PAGE_SIZE:
            raise OSError(errno.EINVAL, "certificate buffer not page aligned")
        if self.busy:
            self.busy -= 1
            ctypes.memmove(ctypes.addressof(argument) + 24, struct.pack("<II", 0, 2), 8)
            raise OSError(errno.EIO, "busy")
        if certs_len < self.needed:
            ctypes.memmove(request_address + 104, struct.pack("<I", self.needed), 4)  # bytes needed, whole pages
            ctypes.memmove(
                ctypes.addressof(argument) + 24, struct.pack("<II", 0, 1), 8
            )  # SNP_GUEST_VMM_ERR_INVALID_LEN
            raise OSError(errno.EIO, "certificate buffer too small")
        table = self.firmware.cert_table
        ctypes.memmove(certs_address, table, len(table))
        report = self.firmware.report(user_data, GuestOptions(measurement=MEASUREMENT, vmpl=vmpl))
        ctypes.memmove(response_address, struct.pack("<II", 0, len(report)) + bytes(24) + report, 32 + len(report))
        return 0


@pytest.fixture(scope="module")
def firmware() -> SimulatedSnpFirmware:
    return SimulatedSnpFirmware(load_or_create(shared_simulated_dir()))


@pytest.fixture
def device(tmp_path: Path) -> Path:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/sev-guest").write_bytes(b"")
    return tmp_path


def test_extended_report_with_certificates(device: Path, firmware: SimulatedSnpFirmware) -> None:
    kernel = FakeSevGuestKernel(firmware)
    evidence = SevGuestAttester(root=device, vmpl=1, ioctl=kernel).evidence(USER_DATA)
    assert kernel.calls == [(1, 4 * PAGE_SIZE)]
    report = parse_report(evidence.evidence)
    assert report.report_data == USER_DATA and report.vmpl == 1
    pki = load_or_create(shared_simulated_dir())
    assert evidence.certificates == (pki.amd.vcek.der, pki.amd.ask.der, pki.amd.ark.der)
    appraisal = appraise_snp(evidence.evidence, certificates=evidence.certificates, policy=trusting(pki), at=now())
    assert {r.check for r in appraisal.reasons} == {"snp.policy.vmpl"}  # authentic; VMPL 1 is not allowed by default


def test_too_small_certificate_buffer_is_retried_with_the_size_the_host_asks_for(
    device: Path, firmware: SimulatedSnpFirmware
) -> None:
    kernel = FakeSevGuestKernel(firmware, cert_pages=6)
    evidence = SevGuestAttester(root=device, ioctl=kernel).evidence(USER_DATA)
    assert kernel.calls == [(0, 4 * PAGE_SIZE), (0, 6 * PAGE_SIZE)]
    assert parse_report(evidence.evidence).report_data == USER_DATA and len(evidence.certificates) == 3


def test_busy_host_is_retried_and_errors_are_typed(device: Path, firmware: SimulatedSnpFirmware) -> None:
    kernel = FakeSevGuestKernel(firmware, busy=2)
    SevGuestAttester(root=device, ioctl=kernel).evidence(USER_DATA)
    assert len(kernel.calls) == 3
    with pytest.raises(SevGuestError, match=r"needs a .*-byte certificate buffer"):
        SevGuestAttester(root=device, ioctl=FakeSevGuestKernel(firmware, cert_pages=1000)).evidence(USER_DATA)
    with pytest.raises(SevGuestError, match="cannot open"):
        SevGuestAttester(root=device / "nowhere").evidence(USER_DATA)
    with pytest.raises(SevGuestError, match="vmpl"):
        SevGuestAttester(root=device, vmpl=4)


def test_firmware_error_status_is_reported() -> None:
    with pytest.raises(SevGuestError, match="status 0x16"):
        report_from_response(struct.pack("<II", 0x16, 0) + bytes(4000 - 8))
    with pytest.raises(SevGuestError, match="report_size"):
        report_from_response(struct.pack("<II", 0, 1000) + bytes(4000 - 8))
