"""The appraisal policy: a TOML file with common keys and one section per platform.

See ``docs/attestation.md`` and ``attestation/examples/policy.toml`` for the reference.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from .errors import PolicyError
from .validate.fields import (
    read_bool,
    read_duration,
    read_hex,
    read_str_set,
    read_table,
    reject_unknown_keys,
)
from .validate.nvidia import GpuPolicy
from .validate.snp import SnpPolicy
from .validate.tdx import TdxPolicy

PLATFORMS = ("sev-snp", "tdx", "nvidia-gpu")
COMMON_KEYS = (
    "platforms",
    "allow_debug",
    "report_data",
    "require_collateral",
    "max_collateral_age",
    "trusted_simulated_roots",
    "require_gpu",
)
MAX_POLICY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Policy:
    """What a relying party accepts. The defaults are the default policy of the CLI:
    authenticity required, debug forbidden, TCB appraised when collateral is given."""

    #: Platforms whose evidence may be accepted at all.
    platforms: frozenset[str] = frozenset({"sev-snp", "tdx", "nvidia-gpu"})
    #: Accept evidence from a guest or TD with debugging enabled.
    allow_debug: bool = False
    #: When set, the evidence's report_data must equal these 64 bytes.
    report_data: bytes | None = None
    #: Reject TDX evidence without full collateral (TCB info, QE identity, CRLs).
    require_collateral: bool = False
    #: Reject collateral issued longer ago than this.
    max_collateral_age: timedelta | None = None
    #: SHA-256 fingerprints (hex) of simulated roots this policy trusts.
    trusted_simulated_roots: frozenset[str] = frozenset()
    #: Evidence bundles must carry GPU evidence bound to their CPU evidence.
    require_gpu: bool = False
    snp: SnpPolicy = field(default_factory=SnpPolicy)
    tdx: TdxPolicy = field(default_factory=TdxPolicy)
    gpu: GpuPolicy = field(default_factory=GpuPolicy)

    @classmethod
    def from_toml(cls, text: str) -> "Policy":
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
    def from_dict(cls, data: dict[str, Any]) -> "Policy":
        reject_unknown_keys(data, COMMON_KEYS + PLATFORMS, "policy")
        fingerprints = read_str_set(data, "trusted_simulated_roots", "policy")
        for fp in fingerprints:
            if len(fp) != 64 or any(ch not in "0123456789abcdef" for ch in fp):
                raise PolicyError(f"[policy] trusted_simulated_roots: {fp!r} is not a lowercase SHA-256 hex fingerprint")
        return cls(
            platforms=read_str_set(data, "platforms", "policy", PLATFORMS, default=PLATFORMS),
            allow_debug=read_bool(data, "allow_debug", "policy", False),
            report_data=read_hex(data, "report_data", "policy", 64),
            require_collateral=read_bool(data, "require_collateral", "policy", False),
            max_collateral_age=read_duration(data, "max_collateral_age", "policy"),
            trusted_simulated_roots=fingerprints,
            require_gpu=read_bool(data, "require_gpu", "policy", False),
            snp=SnpPolicy.from_table(read_table(data, "sev-snp", "policy")),
            tdx=TdxPolicy.from_table(read_table(data, "tdx", "policy")),
            gpu=GpuPolicy.from_table(read_table(data, "nvidia-gpu", "policy")),
        )

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
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
