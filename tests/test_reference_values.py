"""`attestfl reference-values snp`: the same measurement as sev-snp-measure's own command for
the same inputs, on Debian's OVMF (apt package ``ovmf``); a snippet the policy loader accepts;
clear errors (exit 2, no traceback) for unusable inputs."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from attestation.policy import Policy
from attestation.reference_values import ReferenceValueError, init_data_digest
from attestfl.cli import main

DEBIAN_OVMF = Path("/usr/share/ovmf/OVMF.fd")
SEV_SNP_MEASURE = Path(sys.executable).with_name("sev-snp-measure")


@pytest.fixture(scope="module")
def ovmf() -> Path:
    assert DEBIAN_OVMF.is_file(), (
        f"{DEBIAN_OVMF} is missing: these tests need Debian's OVMF firmware; install it with `apt-get install -y ovmf`"
    )
    return DEBIAN_OVMF


def sev_snp_measure(*argv: str) -> subprocess.CompletedProcess[str]:
    assert SEV_SNP_MEASURE.is_file(), f"{SEV_SNP_MEASURE} missing: pip install -e '.[test]'"
    return subprocess.run([str(SEV_SNP_MEASURE), "--mode", "snp", *argv], capture_output=True, text=True, timeout=60)


def ours(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["reference-values", "snp", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("vcpus", "vcpu_type"),
    [("4", "EPYC-v4"), ("1", "EPYC-Milan"), ("16", "EPYC-Genoa")],
)
def test_same_measurement_as_sev_snp_measure(
    capsys: pytest.CaptureFixture[str], ovmf: Path, vcpus: str, vcpu_type: str
) -> None:
    reference = sev_snp_measure("--vcpus", vcpus, "--vcpu-type", vcpu_type, "--ovmf", str(ovmf))
    assert reference.returncode == 0, reference.stderr
    expected = reference.stdout.strip()
    assert len(expected) == 96

    code, out, err = ours(capsys, "--ovmf", str(ovmf), "--vcpus", vcpus, "--vcpu-type", vcpu_type)
    assert code == 0, err
    policy = Policy.from_toml(out)
    assert policy.snp.measurement == frozenset({bytes.fromhex(expected)})
    assert f'measurement = ["{expected}"]' in out
    assert hashlib.sha256(ovmf.read_bytes()).hexdigest() in out  # inputs recorded for the site
    assert f"vcpus {vcpus}, vcpu-type {vcpu_type}" in out


def test_inputs_change_the_measurement(capsys: pytest.CaptureFixture[str], ovmf: Path) -> None:
    values = set()
    for vcpus, vcpu_type in (("4", "EPYC-v4"), ("2", "EPYC-v4"), ("4", "EPYC-Milan")):
        code, out, err = ours(capsys, "--ovmf", str(ovmf), "--vcpus", vcpus, "--vcpu-type", vcpu_type)
        assert code == 0, err
        values.add(Policy.from_toml(out).snp.measurement)
    assert len(values) == 3


def test_guest_features_and_vmm_type_match_sev_snp_measure(capsys: pytest.CaptureFixture[str], ovmf: Path) -> None:
    reference = sev_snp_measure(
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
        "--ovmf",
        str(ovmf),
        "--guest-features",
        "0x21",
        "--vmm-type",
        "gce",
    )
    assert reference.returncode == 0, reference.stderr
    code, out, err = ours(
        capsys,
        "--ovmf",
        str(ovmf),
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
        "--guest-features",
        "0x21",
        "--vmm-type",
        "gce",
    )
    assert code == 0, err
    assert Policy.from_toml(out).snp.measurement == frozenset({bytes.fromhex(reference.stdout.strip())})


def test_init_data_pins_host_data(capsys: pytest.CaptureFixture[str], ovmf: Path, tmp_path: Path) -> None:
    init_data = tmp_path / "initdata.toml"
    text = b"algorithm = \"sha256\"\nversion = \"0.1.0\"\n\n[data]\n\"aggregator.toml\" = '''\n[server]\n'''\n"
    init_data.write_bytes(text)
    code, out, err = ours(
        capsys, "--ovmf", str(ovmf), "--vcpus", "4", "--vcpu-type", "EPYC-v4", "--init-data", str(init_data)
    )
    assert code == 0, err
    assert Policy.from_toml(out).snp.host_data == frozenset({hashlib.sha256(text).digest()})


def test_init_data_digest_widths() -> None:
    text = b'algorithm = "sha384"\nversion = "0.1.0"\n[data]\n'
    digest = hashlib.sha384(text).digest()
    assert init_data_digest(text, "sev-snp") == digest[:32]  # truncated into HOST_DATA
    assert init_data_digest(text, "tdx") == digest  # MRCONFIGID is 48 bytes
    text256 = text.replace(b"sha384", b"sha256")
    assert init_data_digest(text256, "tdx") == hashlib.sha256(text256).digest() + bytes(16)  # zero-padded
    with pytest.raises(ReferenceValueError, match="algorithm"):
        init_data_digest(text.replace(b"sha384", b"md5"), "sev-snp")
    with pytest.raises(ReferenceValueError, match="TOML"):
        init_data_digest(b"not = [toml", "tdx")


def test_kernel_with_debian_ovmf_is_refused_like_sev_snp_measure(
    capsys: pytest.CaptureFixture[str], ovmf: Path, tmp_path: Path
) -> None:
    # Debian's OVMF.fd is the generic OvmfPkgX64 build: SEV metadata, but no kernel-hashes
    # section. sev-snp-measure refuses to measure a kernel with it; so do we, with exit 2.
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"\x7fkernel" * 512)
    initrd.write_bytes(b"initrd" * 100)
    args = (
        "--vcpus",
        "4",
        "--vcpu-type",
        "EPYC-v4",
        "--ovmf",
        str(ovmf),
        "--kernel",
        str(kernel),
        "--initrd",
        str(initrd),
        "--append",
        "console=ttyS0",
    )
    reference = sev_snp_measure(*args)
    assert reference.returncode != 0 and "SNP_KERNEL_HASHES" in reference.stderr
    code, out, err = ours(capsys, *args)
    assert code == 2 and out == ""
    assert "SNP_KERNEL_HASHES" in err and "AmdSev" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read OVMF firmware"),
        (b"\x00" * 10, "not an OVMF image"),
        (b"\x00" * 65536, "SEV_ES_RESET_BLOCK"),
    ],
)
def test_unusable_firmware_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes | None, message: str
) -> None:
    firmware = tmp_path / "firmware.fd"
    if content is not None:
        firmware.write_bytes(content)
    code, out, err = ours(capsys, "--ovmf", str(firmware), "--vcpus", "4", "--vcpu-type", "EPYC-v4")
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], ovmf: Path, tmp_path: Path) -> None:
    for argv, message in (
        (("--vcpus", "4", "--vcpu-type", "Pentium"), "unknown vCPU type"),
        (("--vcpus", "0", "--vcpu-type", "EPYC-v4"), "at least 1"),
        (("--vcpus", "4", "--vcpu-type", "EPYC-v4", "--append", "quiet"), "only together with --kernel"),
        (
            ("--vcpus", "4", "--vcpu-type", "EPYC-v4", "--init-data", str(tmp_path / "absent.toml")),
            "cannot read init-data",
        ),
    ):
        code, out, err = ours(capsys, "--ovmf", str(ovmf), *argv)
        assert code == 2 and out == "", argv
        assert message in err, err


def test_console_script_end_to_end(ovmf: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "attestfl.cli",
            "reference-values",
            "snp",
            "--ovmf",
            str(ovmf),
            "--vcpus",
            "4",
            "--vcpu-type",
            "EPYC-v4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    reference = sev_snp_measure("--vcpus", "4", "--vcpu-type", "EPYC-v4", "--ovmf", str(ovmf))
    assert reference.stdout.strip() in result.stdout


def with_kernel_hashes_section(ovmf: bytes) -> bytes:
    """A SYNTHETIC firmware: Debian's OVMF.fd with a kernel-hashes page declared (the footer
    table's SEV hash-table entry pointed at a free page, and an SNP_KERNEL_HASHES descriptor
    appended to the SEV metadata). It boots nothing; it lets the kernel/initrd/append path be
    compared with sev-snp-measure, which Debian's firmware cannot (no AmdSev build there)."""
    data = bytearray(ovmf)

    def entry_data_offset(guid: str) -> int:
        at = data.rfind(uuid.UUID(guid).bytes_le)
        assert at > 0, guid
        (size,) = struct.unpack_from("<H", data, at - 2)
        return at - 2 - (size - 18)

    hashes_page, page_size, kernel_hashes_type = 0x809000, 0x1000, 0x10
    struct.pack_into("<II", data, entry_data_offset("7255371f-3a3b-4b04-927b-1da6efa8d454"), hashes_page, page_size)
    (from_end,) = struct.unpack_from("<I", data, entry_data_offset("dc886566-984a-4798-a75e-5585a7bf67cc"))
    start = len(data) - from_end
    signature, size, version, count = struct.unpack_from("<4sIII", data, start)
    assert signature == b"ASEV" and size == 16 + 12 * count
    struct.pack_into("<III", data, start + size, hashes_page, page_size, kernel_hashes_type)
    struct.pack_into("<4sIII", data, start, signature, size + 12, version, count + 1)
    return bytes(data)


def test_kernel_initrd_append_match_sev_snp_measure(
    capsys: pytest.CaptureFixture[str], ovmf: Path, tmp_path: Path
) -> None:
    firmware = tmp_path / "OVMF.kernel-hashes.fd"
    firmware.write_bytes(with_kernel_hashes_section(ovmf.read_bytes()))
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"\x7fkernel" * 512)
    initrd.write_bytes(b"initrd" * 100)
    seen = set()
    for files, append in (
        ((kernel, initrd), "console=ttyS0 ro"),
        ((kernel, initrd), "console=ttyS0 rw"),
        ((initrd, kernel), "console=ttyS0 ro"),  # kernel and initrd swapped
    ):
        args = (
            "--vcpus",
            "4",
            "--vcpu-type",
            "EPYC-v4",
            "--ovmf",
            str(firmware),
            "--kernel",
            str(files[0]),
            "--initrd",
            str(files[1]),
            "--append",
            append,
        )
        reference = sev_snp_measure(*args)
        assert reference.returncode == 0, reference.stderr
        code, out, err = ours(capsys, *args)
        assert code == 0, err
        measurement = bytes.fromhex(reference.stdout.strip())
        assert Policy.from_toml(out).snp.measurement == frozenset({measurement})
        assert f'append "{append}"' in out
        seen.add(measurement)
    assert len(seen) == 3  # the command line and the roles of the files are measured
