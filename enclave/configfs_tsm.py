"""Evidence through Linux configfs-tsm (``/sys/kernel/config/tsm/report``, kernel >= 6.7).

The kernel's one interface for SEV-SNP and TDX guests (Documentation/ABI/testing/configfs-tsm).
A report entry is a directory under ``tsm/report``; its attributes:

=====================  ====  ==============================================================
``inblob``             W     up to 64 bytes of report data
``outblob``            R     the report (SNP: the 1184-byte attestation report; TDX: the quote)
``auxblob``            R     SNP only: the certificate table (VCEK/VLEK, ASK, ARK) when the
                             host supplies it
``provider``           R     ``sev_guest`` or ``tdx_guest``
``generation``         R     incremented by every write of ``inblob`` or an option
``privlevel``          W     SNP only: the VMPL the report is requested for (0..3)
``privlevel_floor``    R     SNP only: the lowest privlevel this guest may request
=====================  ====  ==============================================================

Several processes may share an entry. The protocol used here: read ``generation``, write
the options and ``inblob`` (each write adds one), read ``outblob`` and ``auxblob``, then read
``generation`` again; if it is not the first value plus our writes, another writer raced
us and the blobs may not be ours — start again (up to :data:`MAX_ATTEMPTS` times).

Every path is under ``root`` (default ``/``), so tests run this code against a fake tree.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from attestation.errors import EvidenceFormatError
from attestation.platforms.snp import NAME as SNP
from attestation.platforms.snp.abi import parse_cert_table
from attestation.platforms.tdx import NAME as TDX

from .interface import Attester, AttesterError, CpuEvidence, check_report_data

REPORT_DIR = "sys/kernel/config/tsm/report"
#: configfs-tsm provider -> the registered platform of its evidence.
PROVIDERS = {"sev_guest": SNP, "tdx_guest": TDX}
MAX_ATTEMPTS = 8
MAX_OUTBLOB_BYTES = 32 * 1024  # TSM_OUTBLOB_MAX
MAX_AUXBLOB_BYTES = 64 * 1024
MAX_ATTRIBUTE_BYTES = 64
PRIVLEVEL_MAX = 3


class ConfigfsTsmError(AttesterError):
    """configfs-tsm refused the request or returned something unusable."""


class GenerationRaceError(ConfigfsTsmError):
    """Other writers kept changing the report entry; no consistent report was read."""


def report_dir(root: str | Path = "/") -> Path:
    return Path(root) / REPORT_DIR


def configfs_tsm_available(root: str | Path = "/") -> bool:
    return report_dir(root).is_dir()


def _read(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb", buffering=0) as handle:
            chunks = []
            size = 0
            while True:
                chunk = handle.read(min(65536, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise ConfigfsTsmError(f"{path}: more than {limit} bytes")
    except OSError as exc:
        raise ConfigfsTsmError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return b"".join(chunks)


def _write(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb", buffering=0) as handle:
            written = handle.write(data)
    except OSError as exc:
        raise ConfigfsTsmError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if written != len(data):
        raise ConfigfsTsmError(f"{path}: short write ({written} of {len(data)} bytes)")


def _read_int(path: Path) -> int:
    text = _read(path, MAX_ATTRIBUTE_BYTES).strip()
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigfsTsmError(f"{path}: not an integer: {text[:32]!r}") from exc


class ConfigfsTsmAttester(Attester):
    """The configfs-tsm backend.

    ``entry``: the name of an existing report entry to share (the generation check makes
    sharing safe); by default a private entry is created per request and removed after.
    ``privlevel``: request the report for this privilege level (SNP VMPL); ``None`` leaves
    the provider's default. Providers without ``privlevel`` (TDX) refuse a set value.
    """

    name = "configfs-tsm"

    def __init__(self, *, root: str | Path = "/", entry: str | None = None, privlevel: int | None = None) -> None:
        if privlevel is not None and not 0 <= privlevel <= PRIVLEVEL_MAX:
            raise ConfigfsTsmError(f"privlevel must be 0..{PRIVLEVEL_MAX}, got {privlevel}")
        self.root = Path(root)
        self.entry = entry
        self.privlevel = privlevel

    def provider(self, entry_path: Path | None = None) -> str:
        """The provider name of the entry (creating a temporary entry when none is shared)."""
        if entry_path is not None:
            return _read(entry_path / "provider", MAX_ATTRIBUTE_BYTES).decode("ascii", "replace").strip()
        with self._entry() as path:
            return self.provider(path)

    def platform(self) -> str:
        provider = self.provider()
        if provider not in PROVIDERS:
            raise ConfigfsTsmError(
                f"configfs-tsm provider {provider!r} is not supported (known: {', '.join(PROVIDERS)})"
            )
        return PROVIDERS[provider]

    def _entry(self) -> _Entry:
        return _Entry(report_dir(self.root), self.entry)

    def evidence(self, report_data: bytes) -> CpuEvidence:
        report_data = check_report_data(report_data)
        with self._entry() as path:
            provider = self.provider(path)
            platform = PROVIDERS.get(provider)
            if platform is None:
                raise ConfigfsTsmError(
                    f"configfs-tsm provider {provider!r} is not supported (known: {', '.join(PROVIDERS)})"
                )
            if self.privlevel is not None:
                if not (path / "privlevel").exists():
                    raise ConfigfsTsmError(
                        f"the {provider} provider has no privlevel attribute; a privilege level cannot be requested"
                    )
                floor_path = path / "privlevel_floor"
                floor = _read_int(floor_path) if floor_path.exists() else 0
                if self.privlevel < floor:
                    raise ConfigfsTsmError(f"privlevel {self.privlevel} is below this guest's privlevel_floor {floor}")
            for _attempt in range(MAX_ATTEMPTS):
                before = _read_int(path / "generation")
                writes = 0
                if self.privlevel is not None:
                    _write(path / "privlevel", str(self.privlevel).encode())
                    writes += 1
                _write(path / "inblob", report_data)
                writes += 1
                outblob = _read(path / "outblob", MAX_OUTBLOB_BYTES)
                auxblob = _read(path / "auxblob", MAX_AUXBLOB_BYTES) if (path / "auxblob").exists() else b""
                after = _read_int(path / "generation")
                if after == before + writes:
                    return self._evidence(platform, outblob, auxblob)
            raise GenerationRaceError(
                f"{path}: the entry's generation kept changing under us ({MAX_ATTEMPTS} attempts); "
                "other writers share it"
            )

    @staticmethod
    def _evidence(platform: str, outblob: bytes, auxblob: bytes) -> CpuEvidence:
        if not outblob:
            raise ConfigfsTsmError("configfs-tsm returned an empty outblob")
        certificates: tuple[bytes, ...] = ()
        if platform == SNP and auxblob:
            try:
                table = parse_cert_table(auxblob)
            except EvidenceFormatError as exc:
                raise ConfigfsTsmError(f"the auxblob is not an SNP certificate table: {exc}") from exc
            certificates = tuple(table[name] for name in ("vcek", "vlek", "ask", "ark") if name in table)
        return CpuEvidence(platform, outblob, certificates, source="configfs-tsm")


class _Entry:
    """A report entry: shared (named) or private (created here, removed on exit)."""

    def __init__(self, directory: Path, name: str | None) -> None:
        self.directory = directory
        self.name = name
        self.created = False

    def __enter__(self) -> Path:
        if not self.directory.is_dir():
            raise ConfigfsTsmError(
                f"{self.directory} does not exist: configfs-tsm needs Linux >= 6.7 with configfs mounted"
            )
        if self.name is not None:
            path = self.directory / self.name
            if path.is_dir():
                return path
        else:
            path = self.directory / f"attestfl-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
        except OSError as exc:
            raise ConfigfsTsmError(f"cannot create report entry {path}: {exc.strerror or exc}") from exc
        self.created = True
        self.path = path
        return path

    def __exit__(self, *exc_info: object) -> None:
        if self.created:
            try:
                self.path.rmdir()
            except OSError:
                pass
