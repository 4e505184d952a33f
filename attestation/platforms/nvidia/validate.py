"""Appraisal of authenticated NVIDIA GPU evidence against the ``[nvidia-gpu]`` policy section.

Policy keys (all optional; a default-constructed section adds no constraint)::

    [nvidia-gpu]
    allowed_architectures   = ["Hopper"]            # gpu.arch
    allowed_driver_versions = ["550.90.07"]         # gpu.driver_version
    allowed_vbios_versions  = ["96.00.9f.00.01"]    # gpu.vbios_version (case-insensitive)
    require_nonce           = true                  # gpu.nonce: the caller must give the expected nonce
    protected_pcie          = "disabled"            # gpu.protected_pcie: "enabled" or "disabled"
    driver_rims             = ["rims/driver-550.90.07.swidtag"]   # gpu.rim.driver + gpu.measurement.<i>
    vbios_rims              = ["rims/vbios-96.00.9f.00.01.swidtag"]  # gpu.rim.vbios + gpu.measurement.<i>

    [nvidia-gpu.measurements]                       # gpu.measurement.<i>: explicit golden values
    "4"  = "73bbf358...e8214ab"                      # SPDM index (1-based, as in the claims) -> hex
    "12" = ["413d008c...", "758af960..."]           # several acceptable values

Golden measurements: the RIM whose ``colloquialVersion`` equals the reported driver
(VBIOS) version is selected among ``driver_rims`` (``vbios_rims``); the active values of
the selected RIMs are combined; an index pinned in ``measurements`` replaces the RIM's
values for that index. Every golden index must be present in the evidence with one of
its acceptable values; each index that is not gives its own reason. RIM file paths are
read when the policy is loaded (relative paths from the current directory). RIM
signatures are not verified (see :mod:`attestation.platforms.nvidia.rim`).

``protected_pcie`` reads opaque field 21 with NVIDIA's status byte convention (0xAA
enabled, 0x55 disabled, as for the NVDEC0 status); any other byte satisfies neither.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...errors import AttestationError, PolicyError
from ...findings import Reason
from ...validate.fields import (
    parse_hex,
    read_bool,
    read_str_set,
    read_table,
    reject_unknown_keys,
)
from . import NAME
from .abi import STATUS_DISABLED, STATUS_ENABLED
from .rim import ReferenceManifest, combine_golden, load_rim

SECTION = NAME
KEYS = (
    "allowed_architectures",
    "allowed_driver_versions",
    "allowed_vbios_versions",
    "require_nonce",
    "protected_pcie",
    "driver_rims",
    "vbios_rims",
    "measurements",
)
ARCHITECTURES = ("Hopper", "Blackwell")
PCIE_SETTINGS = {"enabled": STATUS_ENABLED, "disabled": STATUS_DISABLED}
MAX_INDEX = 255


def _read_rims(table: dict[str, Any], key: str) -> tuple[ReferenceManifest, ...]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"[{SECTION}] {key}: expected a list of RIM file paths")
    manifests = []
    for path in value:
        try:
            manifests.append(load_rim(path))
        except AttestationError as exc:
            raise PolicyError(f"[{SECTION}] {key}: {exc}") from exc
    seen: dict[tuple[str, str], str] = {}
    for manifest in manifests:
        identity = (manifest.colloquial_version.lower(), manifest.product)
        if identity in seen:
            raise PolicyError(
                f"[{SECTION}] {key}: {seen[identity]} and {manifest.source} are both for version "
                f"{manifest.colloquial_version} of {manifest.product or 'an unnamed product'}"
            )
        seen[identity] = manifest.source
    return tuple(manifests)


def _read_measurements(table: dict[str, Any]) -> Mapping[int, frozenset[bytes]]:
    raw = read_table(table, "measurements", SECTION)
    result: dict[int, frozenset[bytes]] = {}
    for key, value in raw.items():
        where = f"[{SECTION}.measurements] {key!r}"
        if not key.isdigit() or not 1 <= int(key) <= MAX_INDEX:
            raise PolicyError(f"{where}: the key must be an SPDM measurement index 1..{MAX_INDEX}")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values:
            raise PolicyError(f"{where}: expected a hex string or a non-empty list of hex strings")
        result[int(key)] = frozenset(parse_hex(v, where) for v in values)
    return MappingProxyType(result)


@dataclass(frozen=True)
class GpuPolicy:
    """The ``[nvidia-gpu]`` section of a policy. Empty sets mean "no constraint"."""

    #: gpu.arch: acceptable GPU architectures ("Hopper", "Blackwell").
    allowed_architectures: frozenset[str] = frozenset()
    #: gpu.driver_version: acceptable driver versions, e.g. "550.90.07".
    allowed_driver_versions: frozenset[str] = frozenset()
    #: gpu.vbios_version: acceptable VBIOS versions, lowercase, e.g. "96.00.9f.00.01".
    allowed_vbios_versions: frozenset[str] = frozenset()
    #: gpu.nonce: reject evidence appraised without an expected nonce.
    require_nonce: bool = False
    #: gpu.protected_pcie: "enabled" or "disabled" (opaque field 21), or None for no constraint.
    protected_pcie: str | None = None
    #: gpu.rim.driver: driver RIMs; the one matching the reported driver version gives golden values.
    driver_rims: tuple[ReferenceManifest, ...] = ()
    #: gpu.rim.vbios: VBIOS RIMs; the one matching the reported VBIOS version gives golden values.
    vbios_rims: tuple[ReferenceManifest, ...] = ()
    #: gpu.measurement.<i>: explicit golden values, SPDM index -> acceptable values (override RIMs).
    measurements: Mapping[int, frozenset[bytes]] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.protected_pcie is not None and self.protected_pcie not in PCIE_SETTINGS:
            raise PolicyError(
                f"[{SECTION}] protected_pcie: {self.protected_pcie!r} is not one of {', '.join(PCIE_SETTINGS)}"
            )
        object.__setattr__(self, "allowed_vbios_versions", frozenset(v.lower() for v in self.allowed_vbios_versions))
        object.__setattr__(self, "measurements", MappingProxyType(dict(self.measurements)))

    def __hash__(self) -> int:  # the measurements mapping is not hashable by itself
        return hash(
            (
                self.allowed_architectures,
                self.allowed_driver_versions,
                self.allowed_vbios_versions,
                self.require_nonce,
                self.protected_pcie,
                self.driver_rims,
                self.vbios_rims,
                frozenset(self.measurements.items()),
            )
        )

    @property
    def uses_rims(self) -> bool:
        return bool(self.driver_rims or self.vbios_rims)

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> GpuPolicy:
        reject_unknown_keys(table, KEYS, SECTION)
        pcie = table.get("protected_pcie")
        if pcie is not None and (not isinstance(pcie, str) or pcie not in PCIE_SETTINGS):
            raise PolicyError(f'[{SECTION}] protected_pcie: expected "enabled" or "disabled", got {pcie!r}')
        return cls(
            allowed_architectures=read_str_set(table, "allowed_architectures", SECTION, ARCHITECTURES),
            allowed_driver_versions=read_str_set(table, "allowed_driver_versions", SECTION),
            allowed_vbios_versions=read_str_set(table, "allowed_vbios_versions", SECTION),
            require_nonce=read_bool(table, "require_nonce", SECTION, False),
            protected_pcie=pcie,
            driver_rims=_read_rims(table, "driver_rims"),
            vbios_rims=_read_rims(table, "vbios_rims"),
            measurements=_read_measurements(table),
        )


@dataclass(frozen=True)
class GpuFacts:
    """The authenticated facts validation looks at (taken from verified evidence)."""

    arch: str
    chip: str | None
    driver_version: str | None
    vbios_version: str | None
    protected_pcie_status: bytes | None
    measurements: Mapping[int, bytes]
    nonce_checked: bool


def check_architecture(facts: GpuFacts, policy: GpuPolicy) -> list[Reason]:
    """gpu.arch: the architecture named by the certificate chain is allowed."""
    if policy.allowed_architectures and facts.arch not in policy.allowed_architectures:
        return [
            Reason(
                "gpu.arch",
                f"GPU architecture {facts.arch} is not allowed ({', '.join(sorted(policy.allowed_architectures))})",
            )
        ]
    return []


def check_driver_version(facts: GpuFacts, policy: GpuPolicy) -> list[Reason]:
    """gpu.driver_version: the driver version in the opaque data is allowed."""
    if not policy.allowed_driver_versions:
        return []
    if facts.driver_version is None:
        return [Reason("gpu.driver_version", "the evidence carries no driver version")]
    if facts.driver_version not in policy.allowed_driver_versions:
        return [
            Reason(
                "gpu.driver_version",
                f"driver version {facts.driver_version} is not allowed "
                f"({', '.join(sorted(policy.allowed_driver_versions))})",
            )
        ]
    return []


def check_vbios_version(facts: GpuFacts, policy: GpuPolicy) -> list[Reason]:
    """gpu.vbios_version: the VBIOS version in the opaque data is allowed (case-insensitive)."""
    if not policy.allowed_vbios_versions:
        return []
    if facts.vbios_version is None:
        return [Reason("gpu.vbios_version", "the evidence carries no VBIOS version")]
    if facts.vbios_version.lower() not in policy.allowed_vbios_versions:
        return [
            Reason(
                "gpu.vbios_version",
                f"VBIOS version {facts.vbios_version} is not allowed "
                f"({', '.join(sorted(policy.allowed_vbios_versions))})",
            )
        ]
    return []


def check_nonce_required(facts: GpuFacts, policy: GpuPolicy) -> list[Reason]:
    """gpu.nonce: when required, the appraisal was given an expected nonce (its match is checked in verify)."""
    if policy.require_nonce and not facts.nonce_checked:
        return [Reason("gpu.nonce", "the policy requires a fresh GPU nonce, but no expected nonce was given")]
    return []


def check_protected_pcie(facts: GpuFacts, policy: GpuPolicy) -> list[Reason]:
    """gpu.protected_pcie: opaque field 21 is 0xAA (enabled) or 0x55 (disabled) as required."""
    if policy.protected_pcie is None:
        return []
    wanted = PCIE_SETTINGS[policy.protected_pcie]
    status = facts.protected_pcie_status
    if status is None:
        return [
            Reason(
                "gpu.protected_pcie",
                f"the policy requires protected PCIe {policy.protected_pcie}, "
                "but the evidence has no protected PCIe status",
            )
        ]
    if status != bytes([wanted]):
        return [
            Reason(
                "gpu.protected_pcie",
                f"protected PCIe status is {status.hex()}, the policy requires {policy.protected_pcie} ({wanted:02x})",
            )
        ]
    return []


def _select_rim(
    rims: Sequence[ReferenceManifest], version: str | None, chip: str | None, kind: str
) -> tuple[ReferenceManifest | None, list[Reason]]:
    check = f"gpu.rim.{kind}"
    if not rims:
        return None, []
    if version is None:
        return None, [Reason(check, f"the evidence carries no {kind} version to select a {kind} RIM by")]
    candidates = [rim for rim in rims if rim.version_matches(version)]
    if len(candidates) > 1 and chip is not None:
        candidates = [rim for rim in candidates if rim.product == chip]
    if len(candidates) != 1:
        have = ", ".join(sorted(f"{r.colloquial_version} ({r.product})" for r in rims))
        if not candidates:
            return None, [Reason(check, f"no {kind} RIM is for {kind} version {version} (policy has {have})")]
        return None, [Reason(check, f"several {kind} RIMs are for {kind} version {version} and none names chip {chip}")]
    return candidates[0], []


def golden_measurements(
    facts: GpuFacts, policy: GpuPolicy
) -> tuple[dict[int, frozenset[bytes]], list[Reason], tuple[ReferenceManifest, ...]]:
    """(golden values by SPDM index, reasons, RIMs used): RIM values, overridden by explicit pins."""
    reasons: list[Reason] = []
    driver_rim, driver_reasons = _select_rim(policy.driver_rims, facts.driver_version, facts.chip, "driver")
    vbios_rim, vbios_reasons = _select_rim(policy.vbios_rims, facts.vbios_version, facts.chip, "vbios")
    reasons += driver_reasons + vbios_reasons
    used = tuple(r for r in (driver_rim, vbios_rim) if r is not None)
    golden: dict[int, frozenset[bytes]] = {}
    try:
        golden = combine_golden(used)
    except AttestationError as exc:
        reasons.append(Reason("gpu.rim.conflict", str(exc)))
    golden.update(policy.measurements)
    return golden, reasons, used


def check_measurements(facts: GpuFacts, golden: Mapping[int, frozenset[bytes]]) -> list[Reason]:
    """gpu.measurement.<i>: each golden index is reported with one of its acceptable values."""
    reasons = []
    for index in sorted(golden):
        allowed = golden[index]
        actual = facts.measurements.get(index)
        check = f"gpu.measurement.{index}"
        if actual is None:
            reasons.append(Reason(check, f"measurement index {index} is missing from the evidence"))
        elif actual not in allowed:
            reasons.append(
                Reason(
                    check,
                    f"measurement index {index} is {actual.hex()}, not a golden value "
                    f"({', '.join(sorted(v.hex() for v in allowed))})",
                )
            )
    return reasons


def validate_gpu(facts: GpuFacts, policy: GpuPolicy) -> list[Reason]:
    """Every policy check of the section; all failures are returned, never only the first."""
    reasons: list[Reason] = []
    reasons += check_architecture(facts, policy)
    reasons += check_driver_version(facts, policy)
    reasons += check_vbios_version(facts, policy)
    reasons += check_nonce_required(facts, policy)
    reasons += check_protected_pcie(facts, policy)
    golden, rim_reasons, _used = golden_measurements(facts, policy)
    reasons += rim_reasons
    reasons += check_measurements(facts, golden)
    return reasons


def validation_warnings(facts: GpuFacts, policy: GpuPolicy) -> list[str]:
    """What the appraisal must say besides reasons: RIM values were used without a verified signature."""
    _golden, _reasons, used = golden_measurements(facts, policy)
    return [
        f"golden GPU measurements from RIM {rim.source} (version {rim.colloquial_version}): "
        "its XML signature was not verified; the RIM is trusted as policy input"
        for rim in used
    ]
