"""AMD SEV-SNP attestation reports as typed structures (no cryptography here).

Layout per AMD's *SEV Secure Nested Paging Firmware ABI Specification* (publication
56860), table "ATTESTATION_REPORT Structure": 1184 bytes, little-endian, the ECDSA
P-384 signature at 0x2A0 over bytes 0x000..0x29F. Report versions 2, 3 and 5 are
decoded; versions 3+ add the CPUID family/model/stepping at 0x188 (so the product line
is known from the report), version 5 adds the launch and current mitigation vectors.

TCB_VERSION (8 bytes) differs per product line:

=================  ==========================================================
Milan, Genoa       byte 0 BOOT_LOADER, 1 TEE, 2..5 reserved, 6 SNP, 7 MICROCODE
Turin              byte 0 FMC, 1 BOOT_LOADER, 2 TEE, 3 SNP, 4..6 reserved, 7 MICROCODE
=================  ==========================================================

Also here: the extended-report certificate table (the ``auxblob`` of configfs-tsm, the
certificate buffer of ``SNP_GET_EXT_REPORT``) keyed by AMD's GUIDs.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, fields, replace

from ...errors import EvidenceFormatError, EvidenceTooLargeError

REPORT_SIZE = 0x4A0  # 1184
SIGNED_SIZE = 0x2A0  # bytes covered by the signature
SIGNATURE_OFFSET = 0x2A0
SIGNATURE_SIZE = 0x200  # R (72 bytes LE) || S (72 bytes LE) || reserved
ECDSA_COMPONENT_SIZE = 72
SUPPORTED_VERSIONS = (2, 3, 5)
#: SIGNATURE_ALGO 1: ECDSA P-384 with SHA-384, the only one AMD defines.
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1

#: SIGNING_KEY (bits 4:2 of the flags word at 0x48).
SIGNING_KEYS = {0: "vcek", 1: "vlek", 7: "none"}

# Guest policy bits (ABI "Guest Policy Structure").
POLICY_SMT = 1 << 16
POLICY_RESERVED_MBO = 1 << 17  # must be one
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20
POLICY_CXL_ALLOW = 1 << 21
POLICY_MEM_AES_256_XTS = 1 << 22
POLICY_RAPL_DIS = 1 << 23
POLICY_CIPHERTEXT_HIDING = 1 << 24
POLICY_PAGE_SWAP_DISABLE = 1 << 25

# PLATFORM_INFO bits.
PLATFORM_SMT_EN = 1 << 0
PLATFORM_TSME_EN = 1 << 1
PLATFORM_ECC_EN = 1 << 2
PLATFORM_RAPL_DIS = 1 << 3
PLATFORM_CIPHERTEXT_HIDING_EN = 1 << 4
PLATFORM_ALIAS_CHECK_COMPLETE = 1 << 5
PLATFORM_TIO_EN = 1 << 7

PRODUCTS = ("milan", "genoa", "turin")

_FIXED = struct.Struct(
    "<"
    "I"  # 0x000 version
    "I"  # 0x004 guest_svn
    "Q"  # 0x008 policy
    "16s"  # 0x010 family_id
    "16s"  # 0x020 image_id
    "I"  # 0x030 vmpl
    "I"  # 0x034 signature_algo
    "8s"  # 0x038 current_tcb
    "Q"  # 0x040 platform_info
    "I"  # 0x048 flags: author_key_en, mask_chip_key, signing_key
    "4s"  # 0x04C reserved
    "64s"  # 0x050 report_data
    "48s"  # 0x090 measurement
    "32s"  # 0x0C0 host_data
    "48s"  # 0x0E0 id_key_digest
    "48s"  # 0x110 author_key_digest
    "32s"  # 0x140 report_id
    "32s"  # 0x160 report_id_ma
    "8s"  # 0x180 reported_tcb
    "B"  # 0x188 cpuid_fam_id (v3+)
    "B"  # 0x189 cpuid_mod_id (v3+)
    "B"  # 0x18A cpuid_step (v3+)
    "21s"  # 0x18B reserved
    "64s"  # 0x1A0 chip_id
    "8s"  # 0x1E0 committed_tcb
    "B"  # 0x1E8 current_build
    "B"  # 0x1E9 current_minor
    "B"  # 0x1EA current_major
    "x"  # 0x1EB reserved
    "B"  # 0x1EC committed_build
    "B"  # 0x1ED committed_minor
    "B"  # 0x1EE committed_major
    "x"  # 0x1EF reserved
    "8s"  # 0x1F0 launch_tcb
    "Q"  # 0x1F8 launch_mit_vector (v5)
    "Q"  # 0x200 current_mit_vector (v5)
)
assert _FIXED.size == 0x208

#: :data:`_FIXED`'s items in order: the :class:`SnpReport` field each one fills, or the size of a
#: reserved span (zero bytes). Parsing and encoding both read this one table.
_LAYOUT: tuple[str | int, ...] = (
    "version",
    "guest_svn",
    "policy",
    "family_id",
    "image_id",
    "vmpl",
    "signature_algo",
    "current_tcb_raw",
    "platform_info",
    "flags",
    4,
    "report_data",
    "measurement",
    "host_data",
    "id_key_digest",
    "author_key_digest",
    "report_id",
    "report_id_ma",
    "reported_tcb_raw",
    "cpuid_fam_id",
    "cpuid_mod_id",
    "cpuid_step",
    21,
    "chip_id",
    "committed_tcb_raw",
    "current_build",
    "current_minor",
    "current_major",
    "committed_build",
    "committed_minor",
    "committed_major",
    "launch_tcb_raw",
    "launch_mit_vector",
    "current_mit_vector",
)
assert len(_LAYOUT) == len(_FIXED.unpack(bytes(_FIXED.size)))
#: Fields that exist from a report version on (their bytes are reserved, read as 0, before it).
_FIRST_VERSION = {
    "cpuid_fam_id": 3,
    "cpuid_mod_id": 3,
    "cpuid_step": 3,
    "launch_mit_vector": 5,
    "current_mit_vector": 5,
}


@dataclass(frozen=True)
class TcbVersion:
    """One decoded TCB_VERSION: the security patch level of each firmware component."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    #: Turin and later only (the FMC firmware's SPL); ``None`` on Milan and Genoa.
    fmc: int | None = None

    @classmethod
    def from_bytes(cls, raw: bytes, product: str) -> TcbVersion:
        if len(raw) != 8:
            raise EvidenceFormatError(f"TCB_VERSION is 8 bytes, got {len(raw)}")
        if product == "turin":
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def to_bytes(self, product: str) -> bytes:
        if product == "turin":
            return bytes([self.fmc or 0, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        if self.fmc is not None:
            raise EvidenceFormatError(f"{product} TCB_VERSION has no FMC component")
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    def components(self) -> dict[str, int]:
        """Component name -> SPL, FMC only where the product has it (the claims' TCB object)."""
        values = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            values["fmc"] = self.fmc
        return values


@dataclass(frozen=True)
class SnpReport:
    """Every field of an ATTESTATION_REPORT. Byte fields are the report's bytes as stored;
    TCB fields are the raw 8-byte TCB_VERSION values (decode with :meth:`tcb`)."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb_raw: bytes
    platform_info: int
    #: The flags word at 0x48: bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY.
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb_raw: bytes
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    chip_id: bytes
    committed_tcb_raw: bytes
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb_raw: bytes
    launch_mit_vector: int
    current_mit_vector: int
    #: The 512-byte signature field: R and S little-endian, 72 bytes each, then reserved.
    signature: bytes
    #: Exactly the bytes this report was decoded from (empty for a report being built).
    raw: bytes = b""

    # --- decoded views -------------------------------------------------------------------

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signature_r(self) -> int:
        return int.from_bytes(self.signature[:ECDSA_COMPONENT_SIZE], "little")

    @property
    def signature_s(self) -> int:
        return int.from_bytes(self.signature[ECDSA_COMPONENT_SIZE : 2 * ECDSA_COMPONENT_SIZE], "little")

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def author_key_en(self) -> bool:
        return bool(self.flags & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags >> 1 & 1)

    @property
    def signing_key(self) -> str:
        """``"vcek"``, ``"vlek"``, ``"none"`` or ``"reserved(N)"``."""
        code = self.flags >> 2 & 0b111
        return SIGNING_KEYS.get(code, f"reserved({code})")

    @property
    def abi_major(self) -> int:
        return self.policy >> 8 & 0xFF

    @property
    def abi_minor(self) -> int:
        return self.policy & 0xFF

    @property
    def chip_id_is_masked(self) -> bool:
        return self.mask_chip_key or not any(self.chip_id)

    @property
    def product_from_cpuid(self) -> str | None:
        """The product line named by the report's CPUID fields (versions 3+), else ``None``."""
        if self.version < 3:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    def tcb(self, name: str, product: str) -> TcbVersion:
        """Decode ``current``, ``reported``, ``committed`` or ``launch`` TCB for ``product``."""
        return TcbVersion.from_bytes(getattr(self, f"{name}_tcb_raw"), product)

    @property
    def current_version(self) -> str:
        return f"{self.current_major}.{self.current_minor}.{self.current_build}"

    @property
    def committed_version(self) -> str:
        return f"{self.committed_major}.{self.committed_minor}.{self.committed_build}"


def product_from_cpuid(family: int, model: int) -> str | None:
    """AMD family/model -> product line (Zen 3 Milan, Zen 4 Genoa/Bergamo/Siena, Zen 5 Turin)."""
    if family == 0x19:
        if model <= 0x0F:
            return "milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "genoa"
    if family == 0x1A and model <= 0x1F:
        return "turin"
    return None


def looks_like_snp_report(data: bytes) -> bool:
    """True for 1184 bytes with a supported version and signature algorithm 1."""
    if len(data) != REPORT_SIZE:
        return False
    (version,) = struct.unpack_from("<I", data, 0)
    (algo,) = struct.unpack_from("<I", data, 0x34)
    return version in SUPPORTED_VERSIONS and algo == SIGNATURE_ALGO_ECDSA_P384_SHA384


def parse_report(data: bytes) -> SnpReport:
    """Decode an attestation report; raises :class:`EvidenceFormatError` for anything that is
    not exactly 1184 bytes of a supported version."""
    if len(data) > 64 * 1024:
        raise EvidenceTooLargeError(f"{len(data)} bytes is far larger than an SEV-SNP report ({REPORT_SIZE} bytes)")
    if len(data) != REPORT_SIZE:
        raise EvidenceFormatError(f"an SEV-SNP attestation report is {REPORT_SIZE} bytes, got {len(data)}")
    data = bytes(data)
    values = _FIXED.unpack_from(data, 0)
    version = values[0]
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceFormatError(
            f"SEV-SNP report version {version} is not supported (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    fields_ = {name: value for name, value in zip(_LAYOUT, values, strict=True) if isinstance(name, str)}
    for name, first_version in _FIRST_VERSION.items():
        if version < first_version:
            fields_[name] = 0  # reserved bytes in earlier versions
    return SnpReport(**fields_, signature=data[SIGNATURE_OFFSET:], raw=data)


# --- building (the simulated TEE emits reports through this) -----------------------------

_SIZES = {
    "family_id": 16,
    "image_id": 16,
    "current_tcb_raw": 8,
    "report_data": 64,
    "measurement": 48,
    "host_data": 32,
    "id_key_digest": 48,
    "author_key_digest": 48,
    "report_id": 32,
    "report_id_ma": 32,
    "reported_tcb_raw": 8,
    "chip_id": 64,
    "committed_tcb_raw": 8,
    "launch_tcb_raw": 8,
    "signature": SIGNATURE_SIZE,
}


def new_report(**values: object) -> SnpReport:
    """A report with every field zero (signature too) except ``values``; version 3 by default."""
    defaults: dict[str, object] = {f.name: 0 for f in fields(SnpReport) if f.name != "raw"}
    defaults.update({name: bytes(size) for name, size in _SIZES.items()})
    defaults.update(version=3, policy=POLICY_RESERVED_MBO, signature_algo=SIGNATURE_ALGO_ECDSA_P384_SHA384)
    unknown = set(values) - set(defaults)
    if unknown:
        raise TypeError(f"unknown SnpReport field(s): {', '.join(sorted(unknown))}")
    defaults.update(values)
    return SnpReport(**defaults)  # type: ignore[arg-type]  # fields by name (checked above), values as given


def _packed(report: SnpReport, item: str | int) -> object:
    """The value :data:`_FIXED` packs for one :data:`_LAYOUT` item of ``report``."""
    if isinstance(item, int):
        return bytes(item)  # reserved
    if report.version < _FIRST_VERSION.get(item, 0):
        return 0  # not in this version: reserved
    return getattr(report, item)


def encode_report(report: SnpReport) -> bytes:
    """The 1184 bytes of ``report`` (its ``raw`` is ignored); inverse of :func:`parse_report`."""
    for name, size in _SIZES.items():
        value = getattr(report, name)
        if not isinstance(value, (bytes, bytearray)) or len(value) != size:
            raise EvidenceFormatError(f"SEV-SNP report field {name} must be {size} bytes")
    if report.version not in SUPPORTED_VERSIONS:
        raise EvidenceFormatError(f"SEV-SNP report version {report.version} is not supported")
    try:
        head = _FIXED.pack(*(_packed(report, item) for item in _LAYOUT))
    except struct.error as exc:
        raise EvidenceFormatError(f"SEV-SNP report field out of range: {exc}") from exc
    return head + bytes(SIGNATURE_OFFSET - len(head)) + report.signature


def encode_signature(r: int, s: int) -> bytes:
    """The 512-byte signature field for an ECDSA signature (r, s)."""
    return (
        r.to_bytes(ECDSA_COMPONENT_SIZE, "little")
        + s.to_bytes(ECDSA_COMPONENT_SIZE, "little")
        + bytes(SIGNATURE_SIZE - 2 * ECDSA_COMPONENT_SIZE)
    )


def with_signature(report_bytes: bytes, r: int, s: int) -> bytes:
    """``report_bytes`` with its signature field replaced by (r, s)."""
    if len(report_bytes) != REPORT_SIZE:
        raise EvidenceFormatError(f"an SEV-SNP attestation report is {REPORT_SIZE} bytes, got {len(report_bytes)}")
    return report_bytes[:SIGNATURE_OFFSET] + encode_signature(r, s)


def flags_word(*, author_key_en: bool = False, mask_chip_key: bool = False, signing_key: str = "vcek") -> int:
    codes = {name: code for code, name in SIGNING_KEYS.items()}
    return int(author_key_en) | int(mask_chip_key) << 1 | codes[signing_key] << 2


def report_replace(report: SnpReport, **changes: object) -> SnpReport:
    return replace(report, raw=b"", **changes)  # type: ignore[arg-type]  # fields by name, values as given


# --- the certificate table of an extended report ------------------------------------------

#: AMD's GUIDs for the certificate table entries (GHCB spec, SNP extended guest request).
CERT_TABLE_GUIDS = {
    "vcek": uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"),
    "vlek": uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
    "ask": uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"),
    "ark": uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"),
}
_GUID_NAMES = {guid.bytes_le: name for name, guid in CERT_TABLE_GUIDS.items()}
_ENTRY = struct.Struct("<16sII")
MAX_CERT_TABLE_BYTES = 64 * 1024
MAX_CERT_TABLE_ENTRIES = 32


def parse_cert_table(data: bytes) -> dict[str, bytes]:
    """Decode a certificate table: entries (GUID, offset, length) ended by an all-zero entry.

    Returns name -> DER for AMD's known GUIDs ("vcek", "vlek", "ask", "ark"); entries
    with other GUIDs are ignored. Offsets are from the start of the table.
    """
    if len(data) > MAX_CERT_TABLE_BYTES:
        raise EvidenceTooLargeError(
            f"certificate table is {len(data)} bytes, over the {MAX_CERT_TABLE_BYTES}-byte limit"
        )
    entries: dict[str, bytes] = {}
    position = 0
    for _ in range(MAX_CERT_TABLE_ENTRIES + 1):
        if position + _ENTRY.size > len(data):
            raise EvidenceFormatError("certificate table is truncated: no terminating all-zero entry")
        guid, offset, length = _ENTRY.unpack_from(data, position)
        position += _ENTRY.size
        if guid == bytes(16) and offset == 0 and length == 0:
            return entries
        if offset + length > len(data) or (offset < position and length):
            raise EvidenceFormatError(f"certificate table entry at {position - _ENTRY.size} points outside the table")
        name = _GUID_NAMES.get(guid)
        if name is not None:
            if name in entries:
                raise EvidenceFormatError(f"certificate table has more than one {name.upper()} entry")
            entries[name] = data[offset : offset + length]
    raise EvidenceFormatError(f"certificate table has more than {MAX_CERT_TABLE_ENTRIES} entries")


def build_cert_table(certificates: dict[str, bytes]) -> bytes:
    """Encode name -> DER ("vcek", "vlek", "ask", "ark") as a certificate table."""
    unknown = set(certificates) - set(CERT_TABLE_GUIDS)
    if unknown:
        raise EvidenceFormatError(f"unknown certificate table entries: {', '.join(sorted(unknown))}")
    header_size = _ENTRY.size * (len(certificates) + 1)
    header, body = b"", b""
    for name, der in certificates.items():
        header += _ENTRY.pack(CERT_TABLE_GUIDS[name].bytes_le, header_size + len(body), len(der))
        body += der
    return header + _ENTRY.pack(bytes(16), 0, 0) + body
