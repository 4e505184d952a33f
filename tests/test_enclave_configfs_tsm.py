"""The configfs-tsm backend against a fake kernel tree under tmp_path.

The fake is a directory tree with the attribute files of a report entry: ``provider``,
``generation`` and ``privlevel_floor`` are plain files; ``inblob`` and ``privlevel`` are
FIFOs whose read ends the fake kernel holds open; ``outblob`` and ``auxblob`` are FIFOs
served by the fake kernel's threads. When the backend opens ``outblob``, the fake does
what the kernel does: takes the pending writes (adding one to ``generation`` for each),
generates the report for the latest ``inblob`` and hands it out. A "racing writer" can be
switched on: it writes other report data (and bumps ``generation``) just before a report
is handed out. The backend code runs unmodified.
"""

from __future__ import annotations

import array
import fcntl
import os
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from attestation.platforms.snp.abi import parse_report
from attestation.platforms.snp.appraise import appraise_snp
from attestation.platforms.tdx.abi import parse_quote
from attestation.platforms.tdx.appraise import appraise_tdx
from enclave.attester import NoTeeError, detect_attester
from enclave.configfs_tsm import MAX_ATTEMPTS, REPORT_DIR, ConfigfsTsmAttester, ConfigfsTsmError, GenerationRaceError
from enclave.sev_guest import SevGuestAttester
from enclave.simulated.pki import load_or_create
from enclave.simulated.snp import GuestOptions, SimulatedSnpFirmware
from enclave.simulated.tdx import SimulatedTdxQuoter, TdOptions
from enclave_fixtures import MEASUREMENT, now, shared_simulated_dir, trusting

REPORT_DATA = bytes(range(100, 164))


class FakeTsmKernel:
    def __init__(
        self,
        root: Path,
        provider: str,
        make_report: Callable[[bytes, int], bytes],
        *,
        auxblob: bytes | None = None,
        privlevel_floor: int | None = None,
    ) -> None:
        self.entry = root / REPORT_DIR / "shared"
        self.entry.mkdir(parents=True)
        (self.entry / "provider").write_text(provider + "\n")
        self.generation = 0
        self._write_generation()
        self.make_report = make_report
        self.inblob = bytes(64)
        self.privlevel = 0
        self.reports_served = 0
        self.races = 0  # how many upcoming reports a racing writer spoils
        self.stop = False
        self._sinks = {}
        for name in ("inblob",) + (("privlevel",) if privlevel_floor is not None else ()):
            os.mkfifo(self.entry / name)
            self._sinks[name] = os.open(self.entry / name, os.O_RDONLY | os.O_NONBLOCK)
        if privlevel_floor is not None:
            (self.entry / "privlevel_floor").write_text(f"{privlevel_floor}\n")
        self._threads = [self._serve("outblob", self._report)]
        if auxblob is not None:
            self._threads.append(self._serve("auxblob", lambda: auxblob))

    def _write_generation(self) -> None:
        tmp = self.entry / ".generation.tmp"
        tmp.write_text(f"{self.generation}\n")
        os.replace(tmp, self.entry / "generation")

    def _drain(self, name: str) -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(self._sinks[name], 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _report(self) -> bytes:
        levels = self._drain("privlevel") if "privlevel" in self._sinks else b""
        for char in levels.decode():
            self.privlevel = int(char)
            self.generation += 1
        blobs = self._drain("inblob")
        assert len(blobs) % 64 == 0
        for start in range(0, len(blobs), 64):
            self.inblob = blobs[start : start + 64]
            self.generation += 1
        if self.races:
            self.races -= 1
            self.inblob = b"\xee" * 64  # another process wrote its own report data
            self.generation += 1
        self._write_generation()
        self.reports_served += 1
        return self.make_report(self.inblob, self.privlevel)

    def _pending(self, name: str) -> int:
        """Bytes written to a FIFO attribute and not yet taken (FIONREAD)."""
        buffer = array.array("i", [0])
        fcntl.ioctl(self._sinks[name], termios.FIONREAD, buffer, True)
        return buffer[0]

    def _serve(self, name: str, content: Callable[[], bytes]) -> threading.Thread:
        """Hand out ``content()`` to each reader of a FIFO attribute. A report is handed out
        once per request (an inblob write); the auxblob once per report."""
        os.mkfifo(self.entry / name)
        served = [0]

        def request_waiting() -> bool:
            if name == "outblob":
                return self._pending("inblob") > 0
            return self.reports_served > served[0]

        def loop() -> None:
            while not self.stop:
                if not request_waiting():
                    time.sleep(0.0002)
                    continue
                fd = os.open(self.entry / name, os.O_WRONLY)  # blocks until the reader opens
                try:
                    data = content()
                    served[0] += 1
                    while data:
                        data = data[os.write(fd, data) :]
                except BrokenPipeError:
                    pass
                finally:
                    os.close(fd)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.stop = True
        for thread in self._threads:
            thread.join(timeout=2)
        for fd in self._sinks.values():
            os.close(fd)


@pytest.fixture(scope="module")
def pki():  # noqa: ANN201
    return load_or_create(shared_simulated_dir())


@pytest.fixture
def tdx_kernel(tmp_path: Path, pki):  # noqa: ANN001, ANN201
    quoter = SimulatedTdxQuoter(pki)
    kernel = FakeTsmKernel(tmp_path, "tdx_guest", lambda blob, _level: quoter.quote(blob, TdOptions(mr_td=MEASUREMENT)))
    yield kernel
    kernel.close()


@pytest.fixture
def snp_kernel(tmp_path: Path, pki):  # noqa: ANN001, ANN201
    firmware = SimulatedSnpFirmware(pki)

    def make(blob: bytes, level: int) -> bytes:
        return firmware.report(blob, GuestOptions(measurement=MEASUREMENT, vmpl=level))

    kernel = FakeTsmKernel(tmp_path, "sev_guest", make, auxblob=firmware.cert_table, privlevel_floor=1)
    yield kernel
    kernel.close()


def test_tdx_report_through_configfs(tmp_path: Path, tdx_kernel: FakeTsmKernel, pki) -> None:  # noqa: ANN001
    attester = ConfigfsTsmAttester(root=tmp_path, entry="shared")
    assert attester.platform() == "tdx"
    evidence = attester.evidence(REPORT_DATA)
    assert (evidence.platform, evidence.source, evidence.certificates) == ("tdx", "configfs-tsm", ())
    assert parse_quote(evidence.evidence).body.report_data == REPORT_DATA
    assert appraise_tdx(evidence.evidence, policy=trusting(pki), at=now()).accepted
    assert tdx_kernel.generation == 1 and tdx_kernel.reports_served == 1


def test_generation_race_is_retried(tmp_path: Path, tdx_kernel: FakeTsmKernel) -> None:
    tdx_kernel.races = 2
    evidence = ConfigfsTsmAttester(root=tmp_path, entry="shared").evidence(REPORT_DATA)
    assert parse_quote(evidence.evidence).body.report_data == REPORT_DATA  # never the other writer's report
    assert tdx_kernel.reports_served == 3
    assert tdx_kernel.generation == 3 + 2  # our three writes and the racer's two


def test_endless_race_gives_up_with_a_clear_error(tmp_path: Path, tdx_kernel: FakeTsmKernel) -> None:
    tdx_kernel.races = MAX_ATTEMPTS
    with pytest.raises(GenerationRaceError, match="generation kept changing"):
        ConfigfsTsmAttester(root=tmp_path, entry="shared").evidence(REPORT_DATA)
    assert tdx_kernel.reports_served == MAX_ATTEMPTS


def test_snp_report_with_auxblob_and_privlevel(tmp_path: Path, snp_kernel: FakeTsmKernel, pki) -> None:  # noqa: ANN001
    evidence = ConfigfsTsmAttester(root=tmp_path, entry="shared", privlevel=2).evidence(REPORT_DATA)
    assert evidence.platform == "sev-snp"
    assert evidence.certificates == (pki.amd.vcek.der, pki.amd.ask.der, pki.amd.ark.der)
    report = parse_report(evidence.evidence)
    assert report.report_data == REPORT_DATA and report.vmpl == 2
    assert snp_kernel.generation == 2  # privlevel and inblob
    appraisal = appraise_snp(evidence.evidence, certificates=evidence.certificates, policy=trusting(pki), at=now())
    assert appraisal.claims["vmpl"] == 2  # verified; the default policy allows VMPL 0 only
    assert {r.check for r in appraisal.reasons} == {"snp.policy.vmpl"}


def test_snp_race_with_privlevel_is_retried(tmp_path: Path, snp_kernel: FakeTsmKernel) -> None:
    snp_kernel.races = 1
    evidence = ConfigfsTsmAttester(root=tmp_path, entry="shared", privlevel=1).evidence(REPORT_DATA)
    assert parse_report(evidence.evidence).report_data == REPORT_DATA
    assert snp_kernel.reports_served == 2 and snp_kernel.generation == 2 + 2 + 1


def test_privlevel_is_honoured_only_where_supported(tmp_path: Path, snp_kernel: FakeTsmKernel) -> None:
    with pytest.raises(ConfigfsTsmError, match="below this guest's privlevel_floor 1"):
        ConfigfsTsmAttester(root=tmp_path, entry="shared", privlevel=0).evidence(REPORT_DATA)
    with pytest.raises(ConfigfsTsmError, match=r"must be 0\.\.3"):
        ConfigfsTsmAttester(root=tmp_path, privlevel=4)


def test_privlevel_on_tdx_is_refused(tmp_path: Path, tdx_kernel: FakeTsmKernel) -> None:
    with pytest.raises(ConfigfsTsmError, match="tdx_guest provider has no privlevel"):
        ConfigfsTsmAttester(root=tmp_path, entry="shared", privlevel=0).evidence(REPORT_DATA)


def test_private_entry_is_created_and_removed(tmp_path: Path) -> None:
    reports = tmp_path / REPORT_DIR
    reports.mkdir(parents=True)
    with pytest.raises(ConfigfsTsmError, match=r"cannot read .*provider"):
        ConfigfsTsmAttester(root=tmp_path).evidence(REPORT_DATA)
    assert list(reports.iterdir()) == []  # the entry it made is gone again


def test_unknown_provider_and_bad_input(tmp_path: Path) -> None:
    entry = tmp_path / REPORT_DIR / "e"
    entry.mkdir(parents=True)
    (entry / "provider").write_text("arm_cca_guest\n")
    with pytest.raises(ConfigfsTsmError, match="not supported"):
        ConfigfsTsmAttester(root=tmp_path, entry="e").evidence(REPORT_DATA)
    with pytest.raises(Exception, match="64 bytes"):
        ConfigfsTsmAttester(root=tmp_path, entry="e").evidence(b"short")


def test_detection(tmp_path: Path) -> None:
    with pytest.raises(NoTeeError, match=r"no TEE found.*configfs-tsm.*sev-guest.*simulated"):
        detect_attester(tmp_path)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/sev-guest").write_bytes(b"")
    assert isinstance(detect_attester(tmp_path), SevGuestAttester)
    with pytest.raises(NoTeeError):
        detect_attester(tmp_path, tee="tdx")
    (tmp_path / REPORT_DIR).mkdir(parents=True)
    assert isinstance(detect_attester(tmp_path), ConfigfsTsmAttester)
