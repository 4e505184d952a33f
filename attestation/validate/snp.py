"""Appraisal of verified SEV-SNP evidence against a policy: the ``[sev-snp]`` section and the
common keys.

Each policy key is one check with the check id ``snp.policy.<key>``; every failed check is
reported. Byte values are hex, exactly as they appear in the report and the claims.

Common keys (top of the policy file) that apply to SEV-SNP:

* ``allow_debug`` — guest policy bit 19 (DEBUG) set is rejected unless true [snp.policy.allow_debug].
* ``report_data`` — REPORT_DATA must equal these 64 bytes [snp.policy.report_data].
* ``require_collateral`` — the AMD CRL for the chain's product line must be given, or found
  fresh in the verifier's collateral store [snp.policy.require_collateral].
* ``max_collateral_age`` — the AMD CRL's thisUpdate must be no older than this [snp.policy.max_collateral_age].

The ``[sev-snp]`` section: see :class:`SnpPolicy`; every key is optional, and an absent key
adds no constraint except where its default says otherwise (``vmpl``,
``allow_migrate_ma``, ``allow_provisional_firmware``, ``signing_keys``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..abi.snp import (
    PLATFORM_CIPHERTEXT_HIDING_EN,
    PLATFORM_SMT_EN,
    PLATFORM_TSME_EN,
    POLICY_MIGRATE_MA,
    POLICY_SINGLE_SOCKET,
    PRODUCTS,
    TcbVersion,
)
from ..errors import PolicyError
from ..findings import Reason
from .fields import read_bool, read_hex_set, read_int, read_str_set, read_table, reject_unknown_keys

if TYPE_CHECKING:
    from ..abi.snp import SnpReport
    from ..policy import Policy
    from ..verify.snp import SnpVerification

SECTION = "sev-snp"
TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")
_PINNED = {
    "measurement": ("MEASUREMENT", 48),
    "host_data": ("HOST_DATA", 32),
    "id_key_digest": ("ID_KEY_DIGEST", 48),
    "author_key_digest": ("AUTHOR_KEY_DIGEST", 48),
    "family_id": ("FAMILY_ID", 16),
    "image_id": ("IMAGE_ID", 16),
    "chip_id": ("CHIP_ID", 64),
}


@dataclass(frozen=True)
class MinimumTcb:
    """Minimum SPL per TCB component; an absent component is not constrained. ``fmc`` applies
    only to products that have it (Turin)."""

    bootloader: int | None = None
    tee: int | None = None
    snp: int | None = None
    microcode: int | None = None
    fmc: int | None = None

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> "MinimumTcb":
        reject_unknown_keys(table, TCB_COMPONENTS, where)
        return cls(**{name: read_int(table, name, where, None, maximum=255) for name in TCB_COMPONENTS})

    def shortfalls(self, tcb: TcbVersion) -> list[str]:
        """``component SPL x < minimum y`` for each component below its minimum."""
        out = []
        for name in TCB_COMPONENTS:
            minimum = getattr(self, name)
            value = getattr(tcb, name)
            if minimum is not None and value is not None and value < minimum:
                out.append(f"{name} SPL {value} < minimum {minimum}")
        return out

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in TCB_COMPONENTS)


def _parse_version(value: Any, where: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    parts = value.split(".") if isinstance(value, str) else []
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise PolicyError(f"{where}: expected a firmware version like \"1.55\" or \"1.55.21\", got {value!r}")
    numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
    if any(n > 255 for n in numbers):
        raise PolicyError(f"{where}: each part of a firmware version is at most 255")
    return numbers[0], numbers[1], numbers[2]


@dataclass(frozen=True)
class SnpPolicy:
    """The ``[sev-snp]`` section of a policy. Every field is one check, ``snp.policy.<field>``
    (the two minimum TCB tables are ``snp.policy.minimum_tcb`` and ``snp.policy.minimum_launch_tcb``)."""

    #: Allowed MEASUREMENT values (48-byte hex each): the launch digest of the guest.
    measurement: frozenset[bytes] = frozenset()
    #: Allowed HOST_DATA values (32 bytes), data the host supplied at launch.
    host_data: frozenset[bytes] = frozenset()
    #: Allowed ID_KEY_DIGEST values (48 bytes): SHA-384 of the ID block's public key.
    id_key_digest: frozenset[bytes] = frozenset()
    #: Allowed AUTHOR_KEY_DIGEST values (48 bytes): SHA-384 of the ID author's public key.
    author_key_digest: frozenset[bytes] = frozenset()
    #: Allowed FAMILY_ID values (16 bytes) from the ID block.
    family_id: frozenset[bytes] = frozenset()
    #: Allowed IMAGE_ID values (16 bytes) from the ID block.
    image_id: frozenset[bytes] = frozenset()
    #: Allowed CHIP_ID values (64 bytes): pins the physical processor. A masked chip ID fails it.
    chip_id: frozenset[bytes] = frozenset()
    #: Required VMPL(s) of the requesting software. Default: 0 only (the most privileged level,
    #: where the guest kernel runs without an SVSM).
    vmpl: frozenset[int] = frozenset({0})
    #: Minimum GUEST_SVN.
    minimum_guest_svn: int | None = None
    #: Minimum SPL per component for the REPORTED, CURRENT and COMMITTED TCB.
    minimum_tcb: MinimumTcb = MinimumTcb()
    #: Minimum SPL per component for the LAUNCH_TCB (the TCB the guest was launched with).
    minimum_launch_tcb: MinimumTcb = MinimumTcb()
    #: Minimum current (and committed) SNP firmware version, "major.minor[.build]".
    minimum_firmware: tuple[int, int, int] | None = None
    #: Accept a current firmware newer than the committed one (provisional, can be rolled back).
    allow_provisional_firmware: bool = False
    #: Minimum guest policy ABI version "major.minor" the guest requires of the firmware.
    minimum_abi: tuple[int, int] | None = None
    #: Accept a guest whose policy allows a migration agent (guest policy bit 18, MIGRATE_MA).
    allow_migrate_ma: bool = False
    #: Accept a platform with simultaneous multithreading enabled (PLATFORM_INFO bit 0).
    allow_smt: bool = True
    #: Require the guest policy's SINGLE_SOCKET bit (20).
    require_single_socket: bool = False
    #: Require transparent SME on the platform (PLATFORM_INFO bit 1, TSME_EN).
    require_tsme: bool = False
    #: Require ciphertext hiding enabled on the platform (PLATFORM_INFO bit 4).
    require_ciphertext_hiding: bool = False
    #: Require an ID block (a non-zero ID_KEY_DIGEST).
    require_id_block: bool = False
    #: Require an author key (AUTHOR_KEY_EN set and a non-zero AUTHOR_KEY_DIGEST).
    require_author_key: bool = False
    #: Signing keys accepted: "vcek" (per-chip) and/or "vlek" (per cloud provider).
    signing_keys: frozenset[str] = frozenset({"vcek", "vlek"})
    #: Product lines accepted ("milan", "genoa", "turin"); empty: any.
    products: frozenset[str] = frozenset()

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> "SnpPolicy":
        keys = tuple(f.name for f in fields(cls))
        reject_unknown_keys(table, keys, SECTION)
        pinned = {key: read_hex_set(table, key, SECTION, size) for key, (_name, size) in _PINNED.items()}
        vmpl_value = table.get("vmpl", [0])
        vmpls = vmpl_value if isinstance(vmpl_value, list) else [vmpl_value]
        if not vmpls or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 3 for v in vmpls):
            raise PolicyError(f"[{SECTION}] vmpl: expected an integer 0..3 or a non-empty list of them, got {vmpl_value!r}")
        abi = _parse_version(table.get("minimum_abi"), f"[{SECTION}] minimum_abi")
        signing_keys = read_str_set(table, "signing_keys", SECTION, ("vcek", "vlek"), default=("vcek", "vlek"))
        if not signing_keys:
            raise PolicyError(f"[{SECTION}] signing_keys: the list is empty, which accepts nothing")
        return cls(
            **pinned,
            vmpl=frozenset(vmpls),
            minimum_guest_svn=read_int(table, "minimum_guest_svn", SECTION, None, maximum=2**32 - 1),
            minimum_tcb=MinimumTcb.from_table(read_table(table, "minimum_tcb", SECTION), f"{SECTION}.minimum_tcb"),
            minimum_launch_tcb=MinimumTcb.from_table(read_table(table, "minimum_launch_tcb", SECTION), f"{SECTION}.minimum_launch_tcb"),
            minimum_firmware=_parse_version(table.get("minimum_firmware"), f"[{SECTION}] minimum_firmware"),
            allow_provisional_firmware=read_bool(table, "allow_provisional_firmware", SECTION, False),
            minimum_abi=None if abi is None else (abi[0], abi[1]),
            allow_migrate_ma=read_bool(table, "allow_migrate_ma", SECTION, False),
            allow_smt=read_bool(table, "allow_smt", SECTION, True),
            require_single_socket=read_bool(table, "require_single_socket", SECTION, False),
            require_tsme=read_bool(table, "require_tsme", SECTION, False),
            require_ciphertext_hiding=read_bool(table, "require_ciphertext_hiding", SECTION, False),
            require_id_block=read_bool(table, "require_id_block", SECTION, False),
            require_author_key=read_bool(table, "require_author_key", SECTION, False),
            signing_keys=signing_keys,
            products=read_str_set(table, "products", SECTION, PRODUCTS),
        )


def _check(key: str) -> str:
    return f"snp.policy.{key}"


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def validate_snp(report: "SnpReport", verification: "SnpVerification", policy: "Policy", *, at: datetime) -> list[Reason]:
    """Every policy check on a verified report; returns every failure (empty: accepted by policy).

    The checks, in order: the common keys (``allow_debug``, ``report_data``,
    ``require_collateral``, ``max_collateral_age``), then each :class:`SnpPolicy` field.
    """
    snp = policy.snp
    reasons: list[Reason] = []
    # Common keys.
    if report.debug and not policy.allow_debug:
        reasons.append(Reason(_check("allow_debug"), f"the guest policy {report.policy:#x} allows debugging (bit 19 DEBUG) and the policy forbids debug"))
    if policy.report_data is not None and report.report_data != policy.report_data:
        reasons.append(Reason(_check("report_data"), f"REPORT_DATA {report.report_data.hex()} differs from the required {policy.report_data.hex()}"))
    if policy.require_collateral and verification.crl_issued is None:
        why = f" ({'; '.join(verification.collateral_notes)})" if verification.collateral_notes else ""
        reasons.append(Reason(_check("require_collateral"), f"the policy requires collateral, but no AMD CRL for the chain's product line was given{why}"))
    if policy.max_collateral_age is not None and verification.crl_issued is not None:
        age = at - verification.crl_issued
        if age > policy.max_collateral_age:
            reasons.append(Reason(_check("max_collateral_age"), f"the AMD CRL was issued {verification.crl_issued.isoformat()}, {age} before the verification time, older than the allowed {policy.max_collateral_age}"))

    # Pinned values.
    for key, (name, _size) in _PINNED.items():
        allowed: frozenset[bytes] = getattr(snp, key)
        value: bytes = getattr(report, key)
        if allowed and value not in allowed:
            reasons.append(Reason(_check(key), f"{name} {value.hex()} is not among the allowed values ({', '.join(sorted(v.hex() for v in allowed))})"))

    if report.vmpl not in snp.vmpl:
        reasons.append(Reason(_check("vmpl"), f"VMPL {report.vmpl} is not among the allowed ({', '.join(map(str, sorted(snp.vmpl)))})"))
    if snp.minimum_guest_svn is not None and report.guest_svn < snp.minimum_guest_svn:
        reasons.append(Reason(_check("minimum_guest_svn"), f"GUEST_SVN {report.guest_svn} is below the minimum {snp.minimum_guest_svn}"))

    product = verification.product
    if product is None and not (snp.minimum_tcb.is_empty and snp.minimum_launch_tcb.is_empty):
        reasons.append(Reason(_check("minimum_tcb"), "the product line is unknown, so the TCB cannot be compared with the policy's minimum"))
    elif product is not None:
        for name in ("reported", "current", "committed"):
            short = snp.minimum_tcb.shortfalls(report.tcb(name, product))
            if short:
                reasons.append(Reason(_check("minimum_tcb"), f"{name.upper()}_TCB is below the minimum: {'; '.join(short)}"))
        short = snp.minimum_launch_tcb.shortfalls(report.tcb("launch", product))
        if short:
            reasons.append(Reason(_check("minimum_launch_tcb"), f"LAUNCH_TCB is below the minimum: {'; '.join(short)}"))

    current = (report.current_major, report.current_minor, report.current_build)
    committed = (report.committed_major, report.committed_minor, report.committed_build)
    if snp.minimum_firmware is not None:
        for name, version in (("current", current), ("committed", committed)):
            if version < snp.minimum_firmware:
                reasons.append(Reason(_check("minimum_firmware"), f"{name} SNP firmware {_version_text(version)} is older than the minimum {_version_text(snp.minimum_firmware)}"))
    if not snp.allow_provisional_firmware and current != committed:
        reasons.append(Reason(_check("allow_provisional_firmware"), f"the current firmware {_version_text(current)} is not the committed one {_version_text(committed)} (provisional firmware can be rolled back)"))
    if snp.minimum_abi is not None and (report.abi_major, report.abi_minor) < snp.minimum_abi:
        reasons.append(Reason(_check("minimum_abi"), f"the guest policy requires ABI {report.abi_major}.{report.abi_minor}, below the minimum {_version_text(snp.minimum_abi)}"))

    if not snp.allow_migrate_ma and report.policy & POLICY_MIGRATE_MA:
        reasons.append(Reason(_check("allow_migrate_ma"), "the guest policy allows a migration agent (bit 18 MIGRATE_MA) and the policy forbids it"))
    if not snp.allow_smt and report.platform_info & PLATFORM_SMT_EN:
        reasons.append(Reason(_check("allow_smt"), "the platform has SMT enabled (PLATFORM_INFO bit 0) and the policy forbids it"))
    if snp.require_single_socket and not report.policy & POLICY_SINGLE_SOCKET:
        reasons.append(Reason(_check("require_single_socket"), "the guest policy's SINGLE_SOCKET bit (20) is clear and the policy requires it"))
    if snp.require_tsme and not report.platform_info & PLATFORM_TSME_EN:
        reasons.append(Reason(_check("require_tsme"), "TSME is not enabled on the platform (PLATFORM_INFO bit 1) and the policy requires it"))
    if snp.require_ciphertext_hiding and not report.platform_info & PLATFORM_CIPHERTEXT_HIDING_EN:
        reasons.append(Reason(_check("require_ciphertext_hiding"), "ciphertext hiding is not enabled on the platform (PLATFORM_INFO bit 4) and the policy requires it"))
    if snp.require_id_block and not any(report.id_key_digest):
        reasons.append(Reason(_check("require_id_block"), "the guest was launched without an ID block (ID_KEY_DIGEST is zero) and the policy requires one"))
    if snp.require_author_key and not (report.author_key_en and any(report.author_key_digest)):
        reasons.append(Reason(_check("require_author_key"), "the ID block has no author key (AUTHOR_KEY_EN clear) and the policy requires one"))
    if report.signing_key not in snp.signing_keys:
        reasons.append(Reason(_check("signing_keys"), f"the report is signed by a {report.signing_key.upper()}, not an allowed key ({', '.join(sorted(snp.signing_keys))})"))
    if snp.products and product not in snp.products:
        reasons.append(Reason(_check("products"), f"product line {product or 'unknown'} is not among the allowed ({', '.join(sorted(snp.products))})"))
    return reasons
