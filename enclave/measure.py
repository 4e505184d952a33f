"""The simulated TEE's launch measurement: a hash over the code that actually runs.

On hardware the measurement is computed by the CPU over the launched image. In the
simulated TEE it is SHA-384 over a domain-separated transcript of

- every file of the installed attestfl packages (``attestation``, ``enclave``, ``native``,
  ``protocol``, ``aggregator``, ``fedsite``, ``auditor``, ``attestfl``), by path relative to
  its package and SHA-384 of its bytes
  (bytecode caches excluded);
- the versions of attestfl and of each of its runtime dependencies as installed;
- the SHA-384 of the aggregator configuration, when one is measured: the configuration bundle's
  bytes (:mod:`enclave.config_bundle`: the file and every file it names, such as the admission
  policy and the initial model).

Changing any code file, any dependency version or the configuration changes the
measurement. 48 bytes: the width of an SNP ``MEASUREMENT`` and a TDX ``MRTD``.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

MEASURED_PACKAGES = ("aggregator", "attestation", "attestfl", "auditor", "enclave", "fedsite", "native", "protocol")
DOMAIN = b"attestfl/v1/simulated-launch-measurement\x00"
_EXCLUDED_DIRS = {"__pycache__"}
_EXCLUDED_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class MeasuredFile:
    package: str
    path: str  # posix path relative to the package directory
    sha384: str


@dataclass(frozen=True)
class Measurement:
    """A launch measurement and everything it covers."""

    digest: bytes  # 48 bytes
    files: tuple[MeasuredFile, ...]
    versions: tuple[tuple[str, str], ...]
    config_sha384: str | None

    @property
    def hex(self) -> str:
        return self.digest.hex()


def _package_dir(name: str) -> Path:
    init = importlib.import_module(name).__file__
    if init is None:  # a namespace package: no __init__.py says where it lives
        raise ImportError(f"{name} is not a regular package: its files cannot be measured")
    return Path(init).resolve().parent


def installed_package_dirs() -> dict[str, Path]:
    """Where the running interpreter imports each measured package from."""
    return {name: _package_dir(name) for name in MEASURED_PACKAGES}


def _package_files(package: str, base: Path) -> list[MeasuredFile]:
    files = []
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if not path.is_file() or path.suffix in _EXCLUDED_SUFFIXES or _EXCLUDED_DIRS & set(rel.parts):
            continue
        files.append(MeasuredFile(package, rel.as_posix(), hashlib.sha384(path.read_bytes()).hexdigest()))
    return files


def _installed_versions() -> list[tuple[str, str]]:
    versions = [("attestfl", metadata.version("attestfl"))]
    for requirement in metadata.requires("attestfl") or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s;<>=!~\[]", requirement, maxsplit=1)[0]
        try:
            versions.append((name.lower(), metadata.version(name)))
        except metadata.PackageNotFoundError:
            versions.append((name.lower(), "not-installed"))
    return sorted(versions)


def measure(config: bytes | None = None, package_dirs: dict[str, Path] | None = None) -> Measurement:
    """Measure the running attestfl installation and, optionally, a configuration.

    ``package_dirs`` names other copies of the packages to measure (default: the ones
    this interpreter imports), e.g. a release tree a site audits before pinning it.
    """
    dirs = installed_package_dirs() if package_dirs is None else package_dirs
    missing = [name for name in MEASURED_PACKAGES if name not in dirs]
    if missing:
        raise ValueError(f"package_dirs lacks {', '.join(missing)}")
    files = [f for package in MEASURED_PACKAGES for f in _package_files(package, Path(dirs[package]))]
    versions = _installed_versions()
    config_sha = hashlib.sha384(config).hexdigest() if config is not None else None
    transcript = hashlib.sha384(DOMAIN)
    for f in files:
        transcript.update(f"file\x00{f.package}\x00{f.path}\x00{f.sha384}\n".encode())
    for name, version in versions:
        transcript.update(f"version\x00{name}\x00{version}\n".encode())
    transcript.update(f"config\x00{config_sha or '-'}\n".encode())
    return Measurement(transcript.digest(), tuple(files), tuple(versions), config_sha)
