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

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from ...errors import PolicyError
from ...findings import Reason
from ...validate.fields import (
    read_bool,
    read_hex_set,
    read_int,
    read_str_set,
    read_table,
    reject_unknown_keys,
)
from ..base import AppraisalPolicy
from . import NAME
from .abi import (
    PLATFORM_CIPHERTEXT_HIDING_EN,
    PLATFORM_SMT_EN,
    PLATFORM_TSME_EN,
    POLICY_MIGRATE_MA,
    POLICY_SINGLE_SOCKET,
    PRODUCTS,
    SnpReport,
    TcbVersion,
)
from .verify import SnpVerification

SECTION = NAME
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
    def from_table(cls, table: dict[str, Any], where: str) -> MinimumTcb:
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
        raise PolicyError(f'{where}: expected a firmware version like "1.55" or "1.55.21", got {value!r}')
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
    def from_table(cls, table: dict[str, Any]) -> SnpPolicy:
        keys = tuple(f.name for f in fields(cls))
        reject_unknown_keys(table, keys, SECTION)
        pinned = {key: read_hex_set(table, key, SECTION, size) for key, (_name, size) in _PINNED.items()}
        vmpl_value = table.get("vmpl", [0])
        vmpls = vmpl_value if isinstance(vmpl_value, list) else [vmpl_value]
        if not vmpls or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 3 for v in vmpls):
            raise PolicyError(
                f"[{SECTION}] vmpl: expected an integer 0..3 or a non-empty list of them, got {vmpl_value!r}"
            )
        abi = _parse_version(table.get("minimum_abi"), f"[{SECTION}] minimum_abi")
        signing_keys = read_str_set(table, "signing_keys", SECTION, ("vcek", "vlek"), default=("vcek", "vlek"))
        if not signing_keys:
            raise PolicyError(f"[{SECTION}] signing_keys: the list is empty, which accepts nothing")
        return cls(
            **pinned,
            vmpl=frozenset(vmpls),
            minimum_guest_svn=read_int(table, "minimum_guest_svn", SECTION, None, maximum=2**32 - 1),
            minimum_tcb=MinimumTcb.from_table(read_table(table, "minimum_tcb", SECTION), f"{SECTION}.minimum_tcb"),
            minimum_launch_tcb=MinimumTcb.from_table(
                read_table(table, "minimum_launch_tcb", SECTION), f"{SECTION}.minimum_launch_tcb"
            ),
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


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


@dataclass(frozen=True)
class SnpFacts:
    """What the checks look at: the verified report, what verification established, the
    policy (common keys) and its ``[sev-snp]`` section, the verification time."""

    report: SnpReport
    verification: SnpVerification
    policy: AppraisalPolicy
    section: SnpPolicy
    at: datetime

    @property
    def current(self) -> tuple[int, int, int]:
        return (self.report.current_major, self.report.current_minor, self.report.current_build)

    @property
    def committed(self) -> tuple[int, int, int]:
        return (self.report.committed_major, self.report.committed_minor, self.report.committed_build)


#: One check: the messages of its failures (none: passed).
Check = Callable[[SnpFacts], Iterator[str]]


# Common keys.


def _allow_debug(f: SnpFacts) -> Iterator[str]:
    if f.report.debug and not f.policy.allow_debug:
        yield f"the guest policy {f.report.policy:#x} allows debugging (bit 19 DEBUG) and the policy forbids debug"


def _report_data(f: SnpFacts) -> Iterator[str]:
    required = f.policy.report_data
    if required is not None and f.report.report_data != required:
        yield f"REPORT_DATA {f.report.report_data.hex()} differs from the required {required.hex()}"


def _require_collateral(f: SnpFacts) -> Iterator[str]:
    if f.policy.require_collateral and f.verification.crl_issued is None:
        notes = f.verification.collateral_notes
        why = f" ({'; '.join(notes)})" if notes else ""
        yield f"the policy requires collateral, but no AMD CRL for the chain's product line was given{why}"


def _max_collateral_age(f: SnpFacts) -> Iterator[str]:
    issued, limit = f.verification.crl_issued, f.policy.max_collateral_age
    if limit is not None and issued is not None and f.at - issued > limit:
        yield (
            f"the AMD CRL was issued {issued.isoformat()}, {f.at - issued} before the verification time, "
            f"older than the allowed {limit}"
        )


# Pinned values and levels.


def _pinned(key: str) -> Check:
    name = _PINNED[key][0]

    def check(f: SnpFacts) -> Iterator[str]:
        allowed: frozenset[bytes] = getattr(f.section, key)
        value: bytes = getattr(f.report, key)
        if allowed and value not in allowed:
            yield (
                f"{name} {value.hex()} is not among the allowed values ({', '.join(sorted(v.hex() for v in allowed))})"
            )

    return check


def _vmpl(f: SnpFacts) -> Iterator[str]:
    if f.report.vmpl not in f.section.vmpl:
        yield f"VMPL {f.report.vmpl} is not among the allowed ({', '.join(map(str, sorted(f.section.vmpl)))})"


def _minimum_guest_svn(f: SnpFacts) -> Iterator[str]:
    minimum = f.section.minimum_guest_svn
    if minimum is not None and f.report.guest_svn < minimum:
        yield f"GUEST_SVN {f.report.guest_svn} is below the minimum {minimum}"


def _minimum_tcb(f: SnpFacts) -> Iterator[str]:
    product = f.verification.product
    if product is None:
        if not (f.section.minimum_tcb.is_empty and f.section.minimum_launch_tcb.is_empty):
            yield "the product line is unknown, so the TCB cannot be compared with the policy's minimum"
        return
    for name in ("reported", "current", "committed"):
        short = f.section.minimum_tcb.shortfalls(f.report.tcb(name, product))
        if short:
            yield f"{name.upper()}_TCB is below the minimum: {'; '.join(short)}"


def _minimum_launch_tcb(f: SnpFacts) -> Iterator[str]:
    product = f.verification.product
    if product is not None:
        short = f.section.minimum_launch_tcb.shortfalls(f.report.tcb("launch", product))
        if short:
            yield f"LAUNCH_TCB is below the minimum: {'; '.join(short)}"


# Firmware.


def _minimum_firmware(f: SnpFacts) -> Iterator[str]:
    minimum = f.section.minimum_firmware
    if minimum is None:
        return
    for name, version in (("current", f.current), ("committed", f.committed)):
        if version < minimum:
            yield f"{name} SNP firmware {_version_text(version)} is older than the minimum {_version_text(minimum)}"


def _allow_provisional_firmware(f: SnpFacts) -> Iterator[str]:
    if not f.section.allow_provisional_firmware and f.current != f.committed:
        yield (
            f"the current firmware {_version_text(f.current)} is not the committed one {_version_text(f.committed)} "
            "(provisional firmware can be rolled back)"
        )


def _minimum_abi(f: SnpFacts) -> Iterator[str]:
    minimum = f.section.minimum_abi
    if minimum is not None and (f.report.abi_major, f.report.abi_minor) < minimum:
        yield (
            f"the guest policy requires ABI {f.report.abi_major}.{f.report.abi_minor}, below the minimum "
            f"{_version_text(minimum)}"
        )


# Guest policy and platform flags.


def _flag(forbidden_when: Callable[[SnpFacts], bool], message: str) -> Check:
    def check(f: SnpFacts) -> Iterator[str]:
        if forbidden_when(f):
            yield message

    return check


def _signing_keys(f: SnpFacts) -> Iterator[str]:
    if f.report.signing_key not in f.section.signing_keys:
        yield (
            f"the report is signed by a {f.report.signing_key.upper()}, not an allowed key "
            f"({', '.join(sorted(f.section.signing_keys))})"
        )


def _products(f: SnpFacts) -> Iterator[str]:
    products, product = f.section.products, f.verification.product
    if products and product not in products:
        yield f"product line {product or 'unknown'} is not among the allowed ({', '.join(sorted(products))})"


#: Every check, in the order reasons are reported: ``(policy key, check)``; a failure is filed
#: as ``snp.policy.<key>``.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("allow_debug", _allow_debug),
    ("report_data", _report_data),
    ("require_collateral", _require_collateral),
    ("max_collateral_age", _max_collateral_age),
    *((key, _pinned(key)) for key in _PINNED),
    ("vmpl", _vmpl),
    ("minimum_guest_svn", _minimum_guest_svn),
    ("minimum_tcb", _minimum_tcb),
    ("minimum_launch_tcb", _minimum_launch_tcb),
    ("minimum_firmware", _minimum_firmware),
    ("allow_provisional_firmware", _allow_provisional_firmware),
    ("minimum_abi", _minimum_abi),
    (
        "allow_migrate_ma",
        _flag(
            lambda f: not f.section.allow_migrate_ma and bool(f.report.policy & POLICY_MIGRATE_MA),
            "the guest policy allows a migration agent (bit 18 MIGRATE_MA) and the policy forbids it",
        ),
    ),
    (
        "allow_smt",
        _flag(
            lambda f: not f.section.allow_smt and bool(f.report.platform_info & PLATFORM_SMT_EN),
            "the platform has SMT enabled (PLATFORM_INFO bit 0) and the policy forbids it",
        ),
    ),
    (
        "require_single_socket",
        _flag(
            lambda f: f.section.require_single_socket and not f.report.policy & POLICY_SINGLE_SOCKET,
            "the guest policy's SINGLE_SOCKET bit (20) is clear and the policy requires it",
        ),
    ),
    (
        "require_tsme",
        _flag(
            lambda f: f.section.require_tsme and not f.report.platform_info & PLATFORM_TSME_EN,
            "TSME is not enabled on the platform (PLATFORM_INFO bit 1) and the policy requires it",
        ),
    ),
    (
        "require_ciphertext_hiding",
        _flag(
            lambda f: (
                f.section.require_ciphertext_hiding and not f.report.platform_info & PLATFORM_CIPHERTEXT_HIDING_EN
            ),
            "ciphertext hiding is not enabled on the platform (PLATFORM_INFO bit 4) and the policy requires it",
        ),
    ),
    (
        "require_id_block",
        _flag(
            lambda f: f.section.require_id_block and not any(f.report.id_key_digest),
            "the guest was launched without an ID block (ID_KEY_DIGEST is zero) and the policy requires one",
        ),
    ),
    (
        "require_author_key",
        _flag(
            lambda f: f.section.require_author_key and not (f.report.author_key_en and any(f.report.author_key_digest)),
            "the ID block has no author key (AUTHOR_KEY_EN clear) and the policy requires one",
        ),
    ),
    ("signing_keys", _signing_keys),
    ("products", _products),
)


def validate_snp(
    report: SnpReport, verification: SnpVerification, policy: AppraisalPolicy, *, at: datetime
) -> list[Reason]:
    """Every policy check on a verified report (:data:`CHECKS`, in order); returns every
    failure (empty: accepted by policy)."""
    facts = SnpFacts(report, verification, policy, policy.section(NAME, SnpPolicy), at)
    return [Reason(f"snp.policy.{key}", message) for key, check in CHECKS for message in check(facts)]
