"""NVIDIA Reference Integrity Manifests (RIMs): golden GPU measurements from local files.

NVIDIA publishes one RIM per driver version and one per VBIOS version (through its RIM
service, and as files NVIDIA's local verifier ships). A RIM is an ISO/IEC 19770-2:2015
SWID tag following the TCG RIM information model::

    <SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" name="GH100" tagId="...">
      <Meta colloquialVersion="96.00.5E.00.01" product="GH100" edition="GPU" .../>
      <Payload>
        <Resource type="Measurement" index="3" active="True" alternatives="2" name="..." size="48"
                  xmlenc-sha384:Hash0="<96 hex digits>" xmlenc-sha384:Hash1="..."/>
        ...
      </Payload>
      <ds:Signature>...</ds:Signature>
    </SoftwareIdentity>

where the ``HashN`` attributes live in the namespace ``http://www.w3.org/2001/04/xmlenc#sha384``.

Index convention: RIM ``index`` counts from 0, SPDM measurement blocks from 1; RIM index
*i* is the golden value of SPDM block *i + 1* (NVIDIA's verifier compares RIM index *i*
with the *i*-th entry of the 1-based block list; the Hopper sample RIM's index 3 holds the
value the Hopper evidence reports in block 4). Everything this module returns uses
**SPDM indices**, the ones in the evidence and in the ``measurements`` claim.

An inactive resource (``active="False"``) is not a golden value: NVIDIA's verifier skips
it. Alternatives (``Hash0`` .. ``HashN-1``) are all acceptable values of one index.

.. warning::
   **RIM signatures are not verified.** RIMs carry an XML-DSig signature by NVIDIA's RIM
   signing chain; this loader does not check it (no XML-DSig library is a dependency, and
   the NVIDIA RIM root is not shipped). A RIM given to the verifier is trusted exactly as
   the policy file that names it is: as the operator's statement of golden values. The
   appraisal says so in a warning whenever RIM values were used. Whether a signature
   element is present is reported (:attr:`ReferenceManifest.has_signature`), never taken
   as proof of anything.

Parsing is strict: documents with a DOCTYPE or entity declarations, unknown payload
elements, malformed indices, hashes of the wrong length, duplicate indices, or no
measurements at all raise :class:`~attestation.errors.CollateralFormatError`; nothing is
dropped silently.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ...errors import CollateralFormatError

SWID_NAMESPACE = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NAMESPACE = "http://www.w3.org/2001/04/xmlenc#sha384"
XMLDSIG_NAMESPACE = "http://www.w3.org/2000/09/xmldsig#"
SHA384_SIZE = 48
#: NVIDIA's RIMs are about 20 KB; refuse anything far larger unread.
MAX_RIM_BYTES = 1024 * 1024
#: An index may have at most this many alternative values.
MAX_ALTERNATIVES = 64
#: SPDM block indices are one byte, so RIM indices are 0..254.
MAX_RIM_INDEX = 254

_FORBIDDEN = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_DECLARED_ENCODING = re.compile(r"\A\ufeff?\s*<\?xml[^>]*?\bencoding\s*=\s*[\"']([^\"']*)[\"']")
_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class RimMeasurement:
    """One ``Resource`` of a RIM payload."""

    rim_index: int
    name: str
    active: bool
    alternatives: tuple[bytes, ...]

    @property
    def spdm_index(self) -> int:
        """The SPDM measurement block this golden value is for (RIM index + 1)."""
        return self.rim_index + 1


@dataclass(frozen=True)
class ReferenceManifest:
    """A parsed NVIDIA RIM. Its signature is NOT verified (see the module documentation)."""

    source: str
    tag_id: str
    name: str
    colloquial_version: str
    product: str
    edition: str
    measurements: tuple[RimMeasurement, ...]
    #: A ds:Signature element is present. It has not been verified.
    has_signature: bool

    def golden_measurements(self) -> Mapping[int, frozenset[bytes]]:
        """SPDM index -> acceptable values, for every *active* resource."""
        return MappingProxyType({m.spdm_index: frozenset(m.alternatives) for m in self.measurements if m.active})

    def version_matches(self, version: str | None) -> bool:
        """Whether this RIM is for ``version`` (driver "550.90.07" or VBIOS "96.00.9f.00.01"; case-insensitive)."""
        return version is not None and self.colloquial_version.lower() == version.strip().lower()


def _local(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


def _child(parent: ElementTree.Element, local: str, where: str) -> ElementTree.Element:
    found = [c for c in parent if _local(c.tag) == (SWID_NAMESPACE, local)]
    if len(found) != 1:
        raise CollateralFormatError(f"{where}: expected exactly one <{local}> element, found {len(found)}")
    return found[0]


def _int_attribute(element: ElementTree.Element, name: str, where: str, minimum: int, maximum: int) -> int:
    value = element.get(name)
    if value is None:
        raise CollateralFormatError(f"{where}: attribute {name!r} is missing")
    if not re.fullmatch(r"[0-9]{1,6}", value.strip()):
        raise CollateralFormatError(f"{where}: attribute {name}={value!r} is not a non-negative integer")
    number = int(value)
    if not minimum <= number <= maximum:
        raise CollateralFormatError(f"{where}: attribute {name}={number} is out of range [{minimum}, {maximum}]")
    return number


def _parse_resource(element: ElementTree.Element, source: str) -> RimMeasurement:
    where = f"{source}: Resource {element.get('name')!r}"
    namespace, local = _local(element.tag)
    if (namespace, local) != (SWID_NAMESPACE, "Resource"):
        raise CollateralFormatError(f"{source}: unexpected element <{local}> in Payload")
    if element.get("type") != "Measurement":
        raise CollateralFormatError(f"{where}: type {element.get('type')!r} is not 'Measurement'")
    index = _int_attribute(element, "index", where, 0, MAX_RIM_INDEX)
    where = f"{source}: Resource index {index}"
    active_text = (element.get("active") or "").strip().lower()
    if active_text not in _BOOLEANS:
        raise CollateralFormatError(f"{where}: attribute active={element.get('active')!r} is not True or False")
    count = _int_attribute(element, "alternatives", where, 1, MAX_ALTERNATIVES)
    size = (
        _int_attribute(element, "size", where, SHA384_SIZE, SHA384_SIZE)
        if element.get("size") is not None
        else SHA384_SIZE
    )
    values: list[bytes] = []
    hash_attributes = {k for k in element.attrib if k.startswith("{")}
    for number in range(count):
        key = f"{{{SHA384_NAMESPACE}}}Hash{number}"
        text = element.get(key)
        if text is None:
            raise CollateralFormatError(f"{where}: alternatives={count} but SHA-384 Hash{number} is missing")
        text = text.strip().lower()
        if not re.fullmatch(r"[0-9a-f]*", text) or len(text) != 2 * size:
            raise CollateralFormatError(f"{where}: Hash{number} is not {size} bytes of hex")
        values.append(bytes.fromhex(text))
        hash_attributes.discard(key)
    if hash_attributes:
        extra = ", ".join(sorted(_local(k)[1] + f" ({_local(k)[0]})" for k in hash_attributes))
        raise CollateralFormatError(
            f"{where}: attributes beyond alternatives={count} or in another hash namespace: {extra}"
        )
    return RimMeasurement(index, element.get("name") or f"Measurement_{index}", _BOOLEANS[active_text], tuple(values))


def parse_rim(data: bytes, source: str = "<RIM>") -> ReferenceManifest:
    """Parse RIM XML bytes. The XML signature is not verified."""
    if len(data) > MAX_RIM_BYTES:
        raise CollateralFormatError(f"{source}: RIM is {len(data)} bytes, over the {MAX_RIM_BYTES}-byte limit")
    # Only UTF-8 is read, so that the DOCTYPE/ENTITY check below sees what the XML parser sees
    # (a UTF-16 document would otherwise carry an entity declaration past it).
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CollateralFormatError(f"{source}: RIM is not UTF-8 text") from exc
    declared = _DECLARED_ENCODING.match(text)
    if declared and declared.group(1).strip().lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise CollateralFormatError(f"{source}: RIM declares encoding {declared.group(1)!r}; only UTF-8 is accepted")
    if _FORBIDDEN.search(text):
        raise CollateralFormatError(f"{source}: RIM contains a DOCTYPE or entity declaration, which are not accepted")
    try:
        root = ElementTree.fromstring(bytes(data))
    except (ElementTree.ParseError, ValueError, LookupError) as exc:
        raise CollateralFormatError(f"{source}: RIM is not well-formed XML: {exc}") from exc
    if _local(root.tag) != (SWID_NAMESPACE, "SoftwareIdentity"):
        raise CollateralFormatError(f"{source}: root element is {root.tag!r}, not a SWID SoftwareIdentity")
    meta = _child(root, "Meta", source)
    payload = _child(root, "Payload", source)
    version = (meta.get("colloquialVersion") or "").strip()
    if not version:
        raise CollateralFormatError(f"{source}: Meta has no colloquialVersion (the driver or VBIOS version)")
    measurements = tuple(_parse_resource(element, source) for element in payload)
    if not measurements:
        raise CollateralFormatError(f"{source}: Payload holds no measurements")
    seen: set[int] = set()
    for m in measurements:
        if m.rim_index in seen:
            raise CollateralFormatError(f"{source}: index {m.rim_index} appears more than once")
        seen.add(m.rim_index)
    has_signature = any(_local(c.tag) == (XMLDSIG_NAMESPACE, "Signature") for c in root)
    return ReferenceManifest(
        source=source,
        tag_id=root.get("tagId") or "",
        name=root.get("name") or "",
        colloquial_version=version,
        product=(meta.get("product") or "").strip(),
        edition=(meta.get("edition") or "").strip(),
        measurements=measurements,
        has_signature=has_signature,
    )


def load_rim(path: str | Path) -> ReferenceManifest:
    """Read and parse a RIM file (``*.swidtag`` / ``*.xml``). The signature is not verified."""
    from ...files import read_bounded

    path = Path(path)
    return parse_rim(read_bounded(path, MAX_RIM_BYTES, "RIM file", CollateralFormatError), str(path))


def combine_golden(manifests: Iterable[ReferenceManifest]) -> dict[int, frozenset[bytes]]:
    """Union of the active golden values of several RIMs (typically one driver and one VBIOS RIM).

    Two RIMs giving an active value for the same index is an error, as in NVIDIA's verifier:
    the driver and the VBIOS measure disjoint blocks.
    """
    combined: dict[int, frozenset[bytes]] = {}
    owner: dict[int, str] = {}
    for manifest in manifests:
        for index, values in manifest.golden_measurements().items():
            if index in combined:
                raise CollateralFormatError(
                    f"measurement index {index} is active in both {owner[index]} and {manifest.source}"
                )
            combined[index] = values
            owner[index] = manifest.source
    return combined
