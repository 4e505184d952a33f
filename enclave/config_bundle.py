"""The configuration bundle: a configuration file and every file it names, as one digest.

What the aggregator runs is decided by its code *and* by what its configuration loads: the
admission policy (who may join), the initial model, certificates named in site rules. The
bundle covers all of them, so none can be changed unseen:

- the configuration file itself (key ``config``);
- every string value of the TOML, at any depth (lists included), that names an existing
  regular file, relative to the configuration's directory (key: the value's dotted key path,
  e.g. ``admission.policy``, ``task.initial_model``, ``admission.sites.a.organisation_ca``;
  list items get ``[i]``). Directories (the audit log, state, the verifier's collateral
  cache) are not files the configuration *loads* as input and are left out.

The bundle's bytes are a canonical text, one line per file, sorted by key::

    attestfl/v1/config-bundle
    file\\0<key>\\0<SHA-384 hex>\\0<size>

Keys, not paths, are measured: the same configuration in another directory has the same
digest. Where it is bound:

- simulated TEE: the launch measurement covers the bundle (:func:`enclave.measure.measure`
  with ``config=bundle.data``), and the simulated launch sets the two fields below as a host would;
- AMD SEV-SNP: ``HOST_DATA`` (32 bytes, fixed by the host at launch) = :attr:`ConfigBundle.sha256`;
- Intel TDX: ``MRCONFIGID`` (48 bytes, fixed at launch) = :attr:`ConfigBundle.sha384`.

A site pins those like the measurement (docs/operators.md, "What the configuration binds").
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation.errors import AttestflError

DOMAIN = "attestfl/v1/config-bundle\n"
#: At most this many files are named (a configuration naming more is refused).
MAX_FILES = 4096
_READ = 1 << 20


class ConfigBundleError(AttestflError, ValueError):
    """The configuration cannot be bundled (unreadable, not TOML, too many files)."""


@dataclass(frozen=True)
class BundledFile:
    key: str  # "config", or the dotted TOML key path of the value that names the file
    sha384: str
    size: int


@dataclass(frozen=True)
class ConfigBundle:
    files: tuple[BundledFile, ...]

    @property
    def data(self) -> bytes:
        """The canonical bytes the simulated measurement covers."""
        lines = [DOMAIN] + [f"file\x00{f.key}\x00{f.sha384}\x00{f.size}\n" for f in self.files]
        return "".join(lines).encode()

    @property
    def sha256(self) -> str:
        """SEV-SNP ``HOST_DATA`` (hex, 32 bytes)."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def sha384(self) -> str:
        """TDX ``MRCONFIGID`` (hex, 48 bytes)."""
        return hashlib.sha384(self.data).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "sha384": self.sha384,
            "files": {f.key: {"sha384": f.sha384, "size": f.size} for f in self.files},
        }


def _digest(path: Path) -> tuple[str, int]:
    hasher = hashlib.sha384()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(_READ):
            hasher.update(block)
            size += len(block)
    return hasher.hexdigest(), size


def _named_files(value: Any, key: str, base: Path, found: dict[str, Path]) -> None:
    if isinstance(value, dict):
        for name, item in value.items():
            _named_files(item, f"{key}.{name}" if key else str(name), base, found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _named_files(item, f"{key}[{index}]", base, found)
    elif isinstance(value, str) and value and "\x00" not in value and len(value) < 4096:
        try:
            candidate = base / value
            if candidate.is_file():
                found[key] = candidate
        except (OSError, ValueError):
            return
        if len(found) > MAX_FILES:
            raise ConfigBundleError(f"the configuration names more than {MAX_FILES} files")


def bundle_files(files: dict[str, bytes]) -> ConfigBundle:
    """The bundle of files given in memory (key -> bytes)."""
    return ConfigBundle(
        tuple(BundledFile(key, hashlib.sha384(data).hexdigest(), len(data)) for key, data in sorted(files.items()))
    )


def config_bundle(path: str | Path) -> ConfigBundle:
    """The bundle of a TOML configuration file and every regular file its values name."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigBundleError(f"{path}: cannot read the configuration ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigBundleError(f"{path}: not a TOML file ({exc})") from None
    found: dict[str, Path] = {}
    _named_files(data, "", path.resolve().parent, found)
    files = [BundledFile("config", hashlib.sha384(raw).hexdigest(), len(raw))]
    for key, named in sorted(found.items()):
        try:
            sha, size = _digest(named)
        except OSError as exc:
            raise ConfigBundleError(f"{path}: {key} = {named}: cannot read ({exc.strerror or exc})") from None
        files.append(BundledFile(key, sha, size))
    return ConfigBundle(tuple(sorted(files, key=lambda f: f.key)))
