"""Intel TDX collateral as typed structures: TCB info v3 and QE identity v2; no cryptography.

Intel PCS serves both as JSON documents ``{"tcbInfo": {...}, "signature": "<hex>"}`` and
``{"enclaveIdentity": {...}, "signature": "<hex>"}``. The signature (ECDSA P-256 with
SHA-256, 64 bytes raw r||s in hex) covers the *exact bytes* of the ``tcbInfo`` /
``enclaveIdentity`` value as it appears in the document: re-serializing the parsed JSON
would change whitespace, key order or number formatting and break (or, worse, fake) the
check. So the document is first validated by :func:`json.loads` (duplicate keys refused),
then a small bounds-checked scanner finds the value's byte span in the raw document; those
bytes are :attr:`TcbInfoDocument.signed_bytes`.

:class:`TdxCollateral` gathers everything a relying party may hold for a TDX quote: the TCB
info documents (one per FMSPC), the QE identity, the PCK CRL(s), the Intel SGX Root CA CRL
and the issuer chains that Intel PCS sends with them. Every part is optional on its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, overload

from ...abi.x509 import Certificate, RevocationList
from ...errors import AttestationError, CollateralFormatError
from ...timeutil import parse_time

#: Refuse JSON collateral documents larger than this before parsing.
MAX_COLLATERAL_JSON_BYTES = 256 * 1024

TCB_INFO_ID_TDX = "TDX"
TCB_INFO_VERSION = 3
QE_IDENTITY_ID_TD_QE = "TD_QE"
QE_IDENTITY_VERSION = 2

#: TCB statuses a TCB info level may carry (Intel PCS API, TCB info v3).
TCB_LEVEL_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)
#: TCB statuses of TDX module identity levels and QE identity levels.
MODULE_TCB_STATUSES = frozenset({"UpToDate", "OutOfDate", "Revoked"})
QE_TCB_STATUSES = frozenset({"UpToDate", "OutOfDate", "Revoked"})

_HEX = re.compile(r"[0-9a-fA-F]*")


# --- locating the exact signed bytes ----------------------------------------------------


def _fail(message: str) -> CollateralFormatError:
    return CollateralFormatError(message)


def _skip_whitespace(raw: bytes, pos: int) -> int:
    while pos < len(raw) and raw[pos] in b" \t\r\n":
        pos += 1
    return pos


def _expect(raw: bytes, pos: int, char: bytes, where: str) -> int:
    if pos >= len(raw) or raw[pos : pos + 1] != char:
        raise _fail(f"{where}: expected {char.decode()!r} at byte {pos}")
    return pos + 1


def _scan_string(raw: bytes, pos: int, where: str) -> int:
    """Index just after the JSON string starting at ``pos`` (which must be a quote)."""
    pos = _expect(raw, pos, b'"', where)
    while pos < len(raw):
        byte = raw[pos]
        if byte == 0x5C:  # backslash: skip the escaped character
            pos += 2
            continue
        if byte == 0x22:
            return pos + 1
        pos += 1
    raise _fail(f"{where}: unterminated string")


def _scan_value(raw: bytes, pos: int, where: str) -> int:
    """Index just after the JSON value starting at ``pos``; iterative, no recursion."""
    if pos >= len(raw):
        raise _fail(f"{where}: value expected at byte {pos}")
    first = raw[pos]
    if first == 0x22:
        return _scan_string(raw, pos, where)
    if first in b"{[":
        depth = 0
        while pos < len(raw):
            byte = raw[pos]
            if byte == 0x22:
                pos = _scan_string(raw, pos, where)
                continue
            if byte in b"{[":
                depth += 1
            elif byte in b"}]":
                depth -= 1
                if depth == 0:
                    return pos + 1
            pos += 1
        raise _fail(f"{where}: unterminated object or array")
    while pos < len(raw) and raw[pos] not in b",}] \t\r\n":
        pos += 1
    return pos


def top_level_value_bytes(raw: bytes, key: str) -> bytes:
    """The exact bytes of the value of ``key`` in the top-level JSON object ``raw``.

    ``raw`` must already have been validated as JSON; the scan is bounds-checked anyway.
    A key present more than once is refused.
    """
    where = f"locating {key!r}"
    pos = _expect(raw, _skip_whitespace(raw, 0), b"{", where)
    found: list[tuple[int, int]] = []
    while True:
        pos = _skip_whitespace(raw, pos)
        if pos < len(raw) and raw[pos] == 0x7D:
            break
        key_start = pos
        pos = _scan_string(raw, pos, where)
        try:
            name = json.loads(raw[key_start:pos])
        except ValueError as exc:
            raise _fail(f"{where}: malformed key at byte {key_start}") from exc
        pos = _expect(raw, _skip_whitespace(raw, pos), b":", where)
        value_start = _skip_whitespace(raw, pos)
        pos = _scan_value(raw, value_start, where)
        if name == key:
            found.append((value_start, pos))
        pos = _skip_whitespace(raw, pos)
        if pos < len(raw) and raw[pos] == 0x2C:
            pos += 1
            continue
        _expect(raw, pos, b"}", where)
        break
    if len(found) != 1:
        raise _fail(f"{where}: the document has {len(found)} {key!r} members, expected exactly one")
    start, end = found[0]
    return raw[start:end]


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _fail(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _load_document(raw: bytes, what: str) -> dict[str, Any]:
    if not isinstance(raw, (bytes, bytearray)):
        raise _fail(f"{what}: expected bytes")
    if len(raw) > MAX_COLLATERAL_JSON_BYTES:
        raise _fail(f"{what} is {len(raw)} bytes, over the {MAX_COLLATERAL_JSON_BYTES}-byte limit")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(f"{what} is not UTF-8 text") from exc
    try:
        document = json.loads(text, object_pairs_hook=_reject_duplicates)
    except CollateralFormatError as exc:
        raise _fail(f"{what}: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise _fail(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise _fail(f"{what}: expected a JSON object at the top level")
    return document


# --- typed field readers -----------------------------------------------------------------


class _Fields:
    """Typed access to one JSON object; errors name the path of the field."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _fail(f"{path}: expected a JSON object")
        self.value = value
        self.path = path

    def _get(self, key: str, required: bool = True) -> Any:
        if key not in self.value:
            if required:
                raise _fail(f"{self.path}.{key} is missing")
            return None
        return self.value[key]

    @overload
    def string(self, key: str, required: Literal[True] = True) -> str: ...
    @overload
    def string(self, key: str, required: bool) -> str | None: ...
    def string(self, key: str, required: bool = True) -> str | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise _fail(f"{self.path}.{key}: expected a string, got {value!r}")
        return value

    @overload
    def integer(self, key: str, bits: int, required: Literal[True] = True) -> int: ...
    @overload
    def integer(self, key: str, bits: int, required: bool) -> int | None: ...
    def integer(self, key: str, bits: int, required: bool = True) -> int | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
            raise _fail(f"{self.path}.{key}: expected an unsigned {bits}-bit integer, got {value!r}")
        return value

    def hex(self, key: str, size: int) -> bytes:
        value = self.string(key)
        if len(value) != 2 * size or not _HEX.fullmatch(value):
            raise _fail(f"{self.path}.{key}: expected {2 * size} hex digits, got {value!r}")
        return bytes.fromhex(value)

    def time(self, key: str) -> datetime:
        value = self.string(key)
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", value):
            raise _fail(f"{self.path}.{key}: expected an ISO-8601 UTC time like 2023-06-18T08:42:58Z, got {value!r}")
        try:
            return parse_time(value)
        except AttestationError as exc:
            raise _fail(f"{self.path}.{key}: {exc}") from exc

    def objects(self, key: str, required: bool = True, non_empty: bool = True) -> list[_Fields]:
        value = self._get(key, required)
        if value is None and not required:
            return []
        if not isinstance(value, list) or (non_empty and not value):
            raise _fail(f"{self.path}.{key}: expected a non-empty array of objects")
        return [_Fields(item, f"{self.path}.{key}[{index}]") for index, item in enumerate(value)]

    @overload
    def obj(self, key: str, required: Literal[True] = True) -> _Fields: ...
    @overload
    def obj(self, key: str, required: bool) -> _Fields | None: ...
    def obj(self, key: str, required: bool = True) -> _Fields | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        return _Fields(value, f"{self.path}.{key}")

    def status(self, key: str, allowed: frozenset[str]) -> str:
        value = self.string(key)
        if value not in allowed:
            raise _fail(
                f"{self.path}.{key}: unknown TCB status {value!r}; expected one of {', '.join(sorted(allowed))}"
            )
        return value

    def advisory_ids(self) -> tuple[str, ...]:
        value = self._get("advisoryIDs", required=False)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _fail(f"{self.path}.advisoryIDs: expected an array of strings")
        return tuple(value)


def _signature(document: dict[str, Any], what: str) -> bytes:
    value = document.get("signature")
    if not isinstance(value, str) or len(value) != 128 or not _HEX.fullmatch(value):
        raise _fail(f"{what}.signature: expected 128 hex digits (ECDSA P-256 r||s)")
    return bytes.fromhex(value)


# --- TCB info v3 -----------------------------------------------------------------------


@dataclass(frozen=True)
class TcbComponent:
    svn: int
    category: str | None = None
    type: str | None = None


@dataclass(frozen=True)
class TcbLevel:
    """One level of a TDX TCB info: SGX components, PCESVN, TDX components and the status."""

    sgx_tcb_components: tuple[TcbComponent, ...]
    pce_svn: int
    tdx_tcb_components: tuple[TcbComponent, ...]
    tcb_date: datetime
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()

    @property
    def sgx_svns(self) -> tuple[int, ...]:
        return tuple(c.svn for c in self.sgx_tcb_components)

    @property
    def tdx_svns(self) -> tuple[int, ...]:
        return tuple(c.svn for c in self.tdx_tcb_components)


@dataclass(frozen=True)
class TdxModule:
    """``tdxModule``: the expected MRSIGNERSEAM and SEAMATTRIBUTES (under a mask)."""

    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes


@dataclass(frozen=True)
class ModuleTcbLevel:
    isvsvn: int
    tcb_date: datetime
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class TdxModuleIdentity:
    """One ``tdxModuleIdentities`` entry: a TDX module major version ("TDX_01") and its levels."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[ModuleTcbLevel, ...]


@dataclass(frozen=True)
class TcbInfo:
    """The ``tcbInfo`` object of a TDX TCB info v3."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModule
    tdx_module_identities: tuple[TdxModuleIdentity, ...] | None
    tcb_levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class TcbInfoDocument:
    """A TCB info document: the raw bytes, the exact signed bytes, the signature, the parsed content."""

    raw: bytes = field(repr=False)
    signed_bytes: bytes = field(repr=False)
    signature: bytes
    tcb_info: TcbInfo


def _components(level: _Fields, key: str) -> tuple[TcbComponent, ...]:
    items = level.objects(key)
    if len(items) != 16:
        raise _fail(f"{level.path}.{key}: expected 16 components, got {len(items)}")
    return tuple(
        TcbComponent(
            svn=item.integer("svn", 8),
            category=item.string("category", required=False),
            type=item.string("type", required=False),
        )
        for item in items
    )


def _tdx_module(fields: _Fields) -> TdxModule:
    return TdxModule(fields.hex("mrsigner", 48), fields.hex("attributes", 8), fields.hex("attributesMask", 8))


def _parse_tcb_info(fields: _Fields) -> TcbInfo:
    identifier = fields.string("id")
    if identifier != TCB_INFO_ID_TDX:
        raise _fail(f"{fields.path}.id: {identifier!r} is not a TDX TCB info (expected {TCB_INFO_ID_TDX!r})")
    version = fields.integer("version", 32)
    if version != TCB_INFO_VERSION:
        raise _fail(f"{fields.path}.version: {version} is not supported (expected {TCB_INFO_VERSION})")
    levels = []
    for level in fields.objects("tcbLevels"):
        tcb = level.obj("tcb")
        levels.append(
            TcbLevel(
                sgx_tcb_components=_components(tcb, "sgxtcbcomponents"),
                pce_svn=tcb.integer("pcesvn", 16),
                tdx_tcb_components=_components(tcb, "tdxtcbcomponents"),
                tcb_date=level.time("tcbDate"),
                tcb_status=level.status("tcbStatus", TCB_LEVEL_STATUSES),
                advisory_ids=level.advisory_ids(),
            )
        )
    identities: tuple[TdxModuleIdentity, ...] | None = None
    if "tdxModuleIdentities" in fields.value:
        identity_list = []
        for identity in fields.objects("tdxModuleIdentities"):
            module_levels = []
            for level in identity.objects("tcbLevels"):
                tcb = level.obj("tcb")
                module_levels.append(
                    ModuleTcbLevel(
                        isvsvn=tcb.integer("isvsvn", 8),
                        tcb_date=level.time("tcbDate"),
                        tcb_status=level.status("tcbStatus", MODULE_TCB_STATUSES),
                        advisory_ids=level.advisory_ids(),
                    )
                )
            module = _tdx_module(identity)
            identity_list.append(
                TdxModuleIdentity(
                    identity.string("id"),
                    module.mrsigner,
                    module.attributes,
                    module.attributes_mask,
                    tuple(module_levels),
                )
            )
        identities = tuple(identity_list)
    tdx_module = fields.obj("tdxModule")
    return TcbInfo(
        id=identifier,
        version=version,
        issue_date=fields.time("issueDate"),
        next_update=fields.time("nextUpdate"),
        fmspc=fields.hex("fmspc", 6),
        pce_id=fields.hex("pceId", 2),
        tcb_type=fields.integer("tcbType", 32),
        tcb_evaluation_data_number=fields.integer("tcbEvaluationDataNumber", 32),
        tdx_module=_tdx_module(tdx_module),
        tdx_module_identities=identities,
        tcb_levels=tuple(levels),
    )


def _parse_signed_document(
    raw: bytes, key: str, what: str, parse: Callable[[_Fields], Any]
) -> tuple[bytes, bytes, Any]:
    document = _load_document(raw, what)
    unknown = sorted(set(document) - {key, "signature"})
    if unknown:
        raise _fail(f"{what}: unexpected top-level member(s) {', '.join(unknown)}")
    if key not in document:
        raise _fail(f"{what}: the {key!r} member is missing")
    signature = _signature(document, what)
    content = parse(_Fields(document[key], key))
    signed = top_level_value_bytes(bytes(raw), key)
    if json.loads(signed) != document[key]:
        raise _fail(f"{what}: the located {key!r} bytes do not decode to the parsed value")
    return signed, signature, content


def parse_tcb_info(raw: bytes) -> TcbInfoDocument:
    """Parse a TDX TCB info v3 document (``{"tcbInfo": {...}, "signature": "..."}``)."""
    signed, signature, content = _parse_signed_document(raw, "tcbInfo", "TCB info", _parse_tcb_info)
    return TcbInfoDocument(bytes(raw), signed, signature, content)


# --- QE identity v2 --------------------------------------------------------------------


@dataclass(frozen=True)
class QeTcbLevel:
    isvsvn: int
    tcb_date: datetime
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnclaveIdentity:
    """The ``enclaveIdentity`` object of a QE identity v2 (here: the TD quoting enclave)."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    tcb_levels: tuple[QeTcbLevel, ...]


@dataclass(frozen=True)
class QeIdentityDocument:
    raw: bytes = field(repr=False)
    signed_bytes: bytes = field(repr=False)
    signature: bytes
    identity: EnclaveIdentity


def _parse_enclave_identity(fields: _Fields) -> EnclaveIdentity:
    identifier = fields.string("id")
    if identifier != QE_IDENTITY_ID_TD_QE:
        raise _fail(
            f"{fields.path}.id: {identifier!r} is not the TD quoting enclave's identity "
            f"(expected {QE_IDENTITY_ID_TD_QE!r})"
        )
    version = fields.integer("version", 32)
    if version != QE_IDENTITY_VERSION:
        raise _fail(f"{fields.path}.version: {version} is not supported (expected {QE_IDENTITY_VERSION})")
    levels = []
    for level in fields.objects("tcbLevels"):
        tcb = level.obj("tcb")
        levels.append(
            QeTcbLevel(
                isvsvn=tcb.integer("isvsvn", 16),
                tcb_date=level.time("tcbDate"),
                tcb_status=level.status("tcbStatus", QE_TCB_STATUSES),
                advisory_ids=level.advisory_ids(),
            )
        )
    return EnclaveIdentity(
        id=identifier,
        version=version,
        issue_date=fields.time("issueDate"),
        next_update=fields.time("nextUpdate"),
        tcb_evaluation_data_number=fields.integer("tcbEvaluationDataNumber", 32),
        miscselect=fields.hex("miscselect", 4),
        miscselect_mask=fields.hex("miscselectMask", 4),
        attributes=fields.hex("attributes", 16),
        attributes_mask=fields.hex("attributesMask", 16),
        mrsigner=fields.hex("mrsigner", 32),
        isvprodid=fields.integer("isvprodid", 16),
        tcb_levels=tuple(levels),
    )


def parse_qe_identity(raw: bytes) -> QeIdentityDocument:
    """Parse a QE identity v2 document (``{"enclaveIdentity": {...}, "signature": "..."}``)."""
    signed, signature, content = _parse_signed_document(raw, "enclaveIdentity", "QE identity", _parse_enclave_identity)
    return QeIdentityDocument(bytes(raw), signed, signature, content)


# --- the whole collateral ----------------------------------------------------------------


@dataclass(frozen=True)
class TdxCollateral:
    """Intel collateral for TDX quotes; every part is optional.

    ``tcb_infos`` may hold TCB infos for several platforms: the one whose FMSPC equals
    the PCK certificate's is used. ``pck_crls`` may hold the PCK Platform CA CRL and the
    PCK Processor CA CRL: the one issued by the PCK leaf's issuer is used. Issuer chains
    are as Intel PCS sends them (signing certificate first, Intel SGX Root CA last).
    """

    tcb_infos: tuple[TcbInfoDocument, ...] = ()
    tcb_info_issuer_chain: tuple[Certificate, ...] = ()
    qe_identity: QeIdentityDocument | None = None
    qe_identity_issuer_chain: tuple[Certificate, ...] = ()
    pck_crls: tuple[RevocationList, ...] = ()
    pck_crl_issuer_chain: tuple[Certificate, ...] = ()
    root_ca_crl: RevocationList | None = None

    def tcb_info_for(self, fmspc: bytes) -> TcbInfoDocument | None:
        for document in self.tcb_infos:
            if document.tcb_info.fmspc == fmspc:
                return document
        return None

    @property
    def is_empty(self) -> bool:
        return not (self.tcb_infos or self.qe_identity or self.pck_crls or self.root_ca_crl)
