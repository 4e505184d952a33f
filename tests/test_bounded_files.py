"""Every file the verifier reads goes through one bounded reader (attestation.files): only
regular files, refused without blocking otherwise (a FIFO must not hang), a size limit checked
before reading, the file named in every error."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from attestation.errors import AttestationError, CollateralFormatError, EvidenceTooLargeError, PolicyError
from attestation.files import open_bounded, read_bounded, read_bounded_buffer
from attestation.platforms.nvidia.rim import load_rim
from attestation.platforms.tdx.collateral import load_collateral_dir
from attestation.policy import Policy
from attestfl.cli import main
from protocol.tensors import UpdateFormatError, encode_tensors, load_model

DEVICES = [Path("/dev/zero"), Path("/dev/null")]


def finishes_quickly(call: Callable[[], object], seconds: float = 10.0) -> object:
    """Run ``call`` in a thread; fail (instead of hanging the suite) if it blocks."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the reader blocked"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def test_reads_a_regular_file_exactly(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    assert read_bounded(path, 1000, "test file") == b"x" * 1000
    buffer = read_bounded_buffer(path, 5000, "test file")
    assert isinstance(buffer, bytearray) and len(buffer) == 1000
    path.write_bytes(b"")
    assert read_bounded(path, 0, "test file") == b""


def test_over_the_limit_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 1001)
    with pytest.raises(EvidenceTooLargeError, match=r"big\.bin is 1001 bytes, larger than 1000 bytes"):
        read_bounded(path, 1000, "evidence file", AttestationError, EvidenceTooLargeError)


def test_fifo_is_refused_without_blocking(fifo: Path) -> None:
    with pytest.raises(AttestationError, match=r"pipe is a FIFO"):
        finishes_quickly(lambda: read_bounded(fifo, 1024, "evidence file"))


@pytest.mark.parametrize("device", DEVICES)
def test_devices_are_refused(device: Path) -> None:
    if not device.exists():
        pytest.skip(f"{device} is absent")
    with pytest.raises(AttestationError, match=rf"{device} is a character device"):
        finishes_quickly(lambda: read_bounded(device, 1 << 40, "policy file"))


def test_directory_and_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="is a directory"):
        read_bounded(tmp_path, 1024, "policy file")
    with pytest.raises(AttestationError, match=r"cannot read policy file .*missing"):
        read_bounded(tmp_path / "missing", 1024, "policy file")
    with pytest.raises(AttestationError, match="cannot read"):
        read_bounded("bad\x00name", 1024, "policy file")


def test_open_bounded_streams_a_regular_file(tmp_path: Path, fifo: Path) -> None:
    path = tmp_path / "image"
    path.write_bytes(b"abc")
    with open_bounded(path, 10, "kernel") as (handle, size):
        assert size == 3 and handle.read() == b"abc"
    with pytest.raises(AttestationError, match="FIFO"):
        finishes_quickly(lambda: open_bounded(fifo, 10, "kernel").__enter__())


def test_a_file_growing_while_read_is_cut_at_the_limit(tmp_path: Path) -> None:
    # /proc files are regular files that report size 0 and then yield data: the tail loop reads
    # them, bounded by the limit
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc")
    assert b"Name:" in read_bounded(status, 1 << 20, "status")
    with pytest.raises(AttestationError, match="grew past the 16-byte limit"):
        read_bounded(status, 16, "status")


# --- every reader of the verifier uses it ---------------------------------------------------


@pytest.mark.parametrize("source", ["fifo", "/dev/zero"])
def test_every_file_reader_refuses_fifos_and_devices(source: str, fifo: Path, tmp_path: Path) -> None:
    path = fifo if source == "fifo" else Path(source)
    readers: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: Policy.load(path), PolicyError),
        (lambda: load_rim(path), CollateralFormatError),
        (lambda: load_model(path), UpdateFormatError),
    ]
    for call, error in readers:
        with pytest.raises(error, match=str(path)):
            finishes_quickly(call)
    # a collateral directory whose TCB info is a FIFO
    directory = tmp_path / "collateral"
    directory.mkdir()
    os.symlink(path, directory / "qe-identity.json")
    with pytest.raises(CollateralFormatError, match=r"qe-identity\.json"):
        finishes_quickly(lambda: load_collateral_dir(directory))


@pytest.mark.parametrize("option", ["FILE", "--cert", "--policy", "--crl"])
def test_cli_refuses_a_fifo_for_every_file_argument(
    option: str, fifo: Path, vectors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = str(vectors / "sev-snp/milan-report-v2.bin")
    argv = ["evidence", "verify", str(fifo)] if option == "FILE" else ["evidence", "verify", report, option, str(fifo)]
    assert finishes_quickly(lambda: main(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("attestfl: error:") and "FIFO" in err and str(fifo) in err and err.count("\n") == 1


def test_load_model_reads_a_model_and_has_a_limit(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    model = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, dtype=np.float32)}
    path.write_bytes(encode_tensors(model))
    loaded = load_model(path)
    assert set(loaded) == {"w", "b"} and np.array_equal(loaded["w"], model["w"]) and loaded["w"].flags.writeable
    with pytest.raises(UpdateFormatError, match=r"model\.safetensors .* larger than 100 bytes"):
        load_model(path, limit=100)
