"""The appraisal policy: a TOML file with common keys and one section per platform.

The common keys are :data:`~attestation.platforms.base.COMMON_POLICY_KEYS`; each registered
platform (:mod:`attestation.platforms.registry`) adds its section under its policy key
(``[sev-snp]``, ``[tdx]``, ``[nvidia-gpu]``, a third party's), parsed by its section class.
See ``docs/attestation.md`` and ``attestation/examples/policy.toml`` for the reference.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, overload

from .errors import PolicyError
from .platforms import registry
from .platforms.base import COMMON_POLICY_KEYS, PolicySection
from .validate.fields import (
    read_bool,
    read_duration,
    read_hex,
    read_str_set,
    read_table,
    reject_unknown_keys,
)

COMMON_KEYS = COMMON_POLICY_KEYS
MAX_POLICY_BYTES = 256 * 1024

SectionT = TypeVar("SectionT")


def _section_map(
    sections: Mapping[str, object] | None, by_attribute: Mapping[str, object]
) -> Mapping[str, PolicySection]:
    resolved: dict[str, object] = dict(sections or {})
    for attribute, section in by_attribute.items():
        platform = registry.by_policy_attribute(attribute)
        if platform is None:
            raise TypeError(f"Policy() got an unexpected keyword argument {attribute!r}")
        resolved[platform.name] = section
    checked: dict[str, PolicySection] = {}
    for name, section in resolved.items():
        platform = registry.find(name)
        if platform is None:
            raise PolicyError(f"policy section for unknown platform {name!r}; known: {', '.join(registry.names())}")
        if not isinstance(section, platform.policy_section):
            raise TypeError(
                f"the {name} policy section must be a {platform.policy_section.__name__}, got {type(section).__name__}"
            )
        checked[name] = section
    return checked


@dataclass(frozen=True, init=False)
class Policy:
    """What a relying party accepts. The defaults are the default policy of the CLI:
    authenticity required, debug forbidden, TCB appraised when collateral is given.

    Each platform's section is ``policy.section(name)``; a platform the policy has no section
    for gets its section's defaults. Sections are given as ``sections={name: section}`` or by
    the platform's policy attribute (``Policy(snp=SnpPolicy(...))``, read back as
    ``policy.snp``)."""

    #: Platforms whose evidence may be accepted at all (default: the built-in platforms).
    platforms: frozenset[str]
    #: Accept evidence from a guest or TD with debugging enabled.
    allow_debug: bool
    #: When set, the evidence's report_data must equal these 64 bytes.
    report_data: bytes | None
    #: Reject evidence without full collateral (SEV-SNP: the AMD CRL; TDX: TCB info, QE identity, CRLs).
    require_collateral: bool
    #: Reject collateral issued longer ago than this.
    max_collateral_age: timedelta | None
    #: SHA-256 fingerprints (hex) of simulated roots this policy trusts.
    trusted_simulated_roots: frozenset[str]
    #: Evidence bundles must carry GPU evidence bound to their CPU evidence.
    require_gpu: bool
    #: The sections given, by platform name.
    sections: Mapping[str, PolicySection]

    def __init__(
        self,
        *,
        platforms: frozenset[str] | None = None,
        allow_debug: bool = False,
        report_data: bytes | None = None,
        require_collateral: bool = False,
        max_collateral_age: timedelta | None = None,
        trusted_simulated_roots: frozenset[str] = frozenset(),
        require_gpu: bool = False,
        sections: Mapping[str, object] | None = None,
        **by_attribute: object,
    ) -> None:
        chosen = frozenset(registry.builtin_names()) if platforms is None else frozenset(platforms)
        unknown = sorted(chosen - set(registry.names()))
        if unknown:
            raise PolicyError(
                f"[policy] platforms: unknown platform(s) {', '.join(unknown)}; known: {', '.join(registry.names())}"
            )
        values: dict[str, Any] = {
            "platforms": chosen,
            "allow_debug": allow_debug,
            "report_data": report_data,
            "require_collateral": require_collateral,
            "max_collateral_age": max_collateral_age,
            "trusted_simulated_roots": frozenset(trusted_simulated_roots),
            "require_gpu": require_gpu,
            "sections": _section_map(sections, by_attribute),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __hash__(self) -> int:
        return hash(
            (
                self.platforms,
                self.allow_debug,
                self.report_data,
                self.require_collateral,
                self.max_collateral_age,
                self.trusted_simulated_roots,
                self.require_gpu,
                frozenset(self.sections.items()),
            )
        )

    @overload
    def section(self, name: str) -> Any: ...

    @overload
    def section(self, name: str, kind: type[SectionT]) -> SectionT: ...

    def section(self, name: str, kind: type[Any] | None = None) -> Any:
        """The section of platform ``name`` (its defaults when the policy has none); with
        ``kind``, checked to be one (a platform reads its own section this way)."""
        value: object = self.sections.get(name)
        if value is None:
            value = registry.get(name).policy_section()
        if kind is not None and not isinstance(value, kind):
            raise TypeError(f"the {name} policy section is a {type(value).__name__}, not a {kind.__name__}")
        return value

    def __getattr__(self, attribute: str) -> Any:
        """``policy.snp``, ``policy.tdx``, ``policy.gpu``: a platform's section by its policy attribute."""
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        platform = registry.by_policy_attribute(attribute)
        if platform is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {attribute!r}")
        return self.section(platform.name)

    def unpinned_measurements(self) -> list[str]:
        """The launch measurement pins this policy leaves empty for the CPU platforms it
        accepts (``"[sev-snp] measurement"``): for those, any code in any TEE passing the policy
        would be accepted."""
        missing = []
        for platform in registry.platforms():
            if platform.name not in self.platforms or not platform.binds_report_data:
                continue
            pin = platform.measurement_pin
            if pin is None:
                missing.append(f"[{platform.policy_key}] (the platform has no launch measurement to pin)")
            elif not getattr(self.section(platform.name), pin.field):
                missing.append(pin.label)
        return missing

    @classmethod
    def from_toml(cls, text: str) -> Policy:
        if not isinstance(text, str):
            raise PolicyError(f"policy must be TOML text, got {type(text).__name__}")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"policy is not valid TOML: {exc}") from exc
        except (RecursionError, ValueError) as exc:  # nesting too deep, an integer too long to convert
            raise PolicyError(f"policy is not usable TOML: {type(exc).__name__}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        known = registry.platforms()
        reject_unknown_keys(data, COMMON_KEYS + tuple(p.policy_key for p in known), "policy")
        fingerprints = read_str_set(data, "trusted_simulated_roots", "policy")
        for fp in fingerprints:
            if len(fp) != 64 or any(ch not in "0123456789abcdef" for ch in fp):
                raise PolicyError(
                    f"[policy] trusted_simulated_roots: {fp!r} is not a lowercase SHA-256 hex fingerprint"
                )
        sections = {
            p.name: p.policy_section.from_table(read_table(data, p.policy_key, "policy"))
            for p in known
            if p.policy_key in data
        }
        return cls(
            platforms=read_str_set(data, "platforms", "policy", registry.names(), default=registry.builtin_names()),
            allow_debug=read_bool(data, "allow_debug", "policy", False),
            report_data=read_hex(data, "report_data", "policy", 64),
            require_collateral=read_bool(data, "require_collateral", "policy", False),
            max_collateral_age=read_duration(data, "max_collateral_age", "policy"),
            trusted_simulated_roots=fingerprints,
            require_gpu=read_bool(data, "require_gpu", "policy", False),
            sections=sections,
        )

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        from .files import read_bounded

        path = Path(path)
        data = read_bounded(path, MAX_POLICY_BYTES, "policy file", PolicyError)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{path}: policy is not UTF-8 text") from exc
        try:
            return cls.from_toml(text)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from exc
