"""The claims of an NVIDIA GPU appraisal."""

from __future__ import annotations

from typing import Any

from ..base import neutral_claims
from . import NAME
from .abi import (
    OPAQUE_FIELD_NAMES,
    TEXT_FIELDS,
    GpuEvidence,
    OpaqueFieldType,
    decode_text,
)
from .verify import GpuVerification

#: What GPU evidence is signed with, as the neutral ``signing_key`` claim names it: the GPU's
#: attestation key, the leaf of its device identity chain.
SIGNING_KEY = "gpu-attestation-key"


def opaque_claims(evidence: GpuEvidence) -> dict[str, Any]:
    """Every opaque field as a claim, under NVIDIA's field name.

    Text fields (driver version, chip SKU and SKU mod, project, project SKU, chip info) are
    strings; ``vbios_version`` is NVIDIA's dotted rendering; ``measurement_count`` maps each
    SPDM index (as a string) to how often that measurement was extended; every other field
    (board id, CPR info, GPU info, project SKU mod, NVDEC0 and protected-PCIe status bytes,
    FWID, ...) is lowercase hex of its raw bytes. An unknown field type ``n`` appears as
    ``opaque_field_n``.
    """
    opaque = evidence.response.opaque
    claims: dict[str, Any] = {}
    for item in opaque.fields:
        name = item.name
        if item.type_id == OpaqueFieldType.VBIOS_VERSION:
            claims[name] = opaque.vbios_version
        elif item.type_id == OpaqueFieldType.MSRSCNT:
            counts = opaque.measurement_counts or ()
            claims[name] = {str(index): count for index, count in enumerate(counts, start=1)}
        elif item.type_id in TEXT_FIELDS:
            claims[name] = decode_text(item.value, OPAQUE_FIELD_NAMES[item.type_id])
        else:
            claims[name] = item.value.hex()
    return claims


def gpu_claims(verification: GpuVerification) -> dict[str, Any]:
    """The claims of the ``nvidia-gpu`` platform (reported whether or not the evidence is
    accepted): the neutral claims (:data:`~attestation.platforms.base.NEUTRAL_CLAIMS`; GPU
    evidence has no launch measurement, debug flag or TCB status: those are None), then the
    evidence's own."""
    evidence = verification.evidence
    opaque = evidence.response.opaque
    claims = neutral_claims(
        NAME, measurement=None, debug=None, simulated=verification.simulated, tcb_status=None, signing_key=SIGNING_KEY
    )
    claims.update(
        {
            "arch": verification.arch,
            "chip": verification.chip,
            "spdm_version": f"{evidence.request.version >> 4}.{evidence.request.version & 0x0F}",
            "nonce": evidence.nonce.hex(),
            "responder_nonce": evidence.response.responder_nonce.hex(),
            "driver_version": opaque.driver_version,
            "vbios_version": opaque.vbios_version,
            "fwid": opaque.fwid.hex() if opaque.fwid is not None else None,
            "measurements": {str(block.index): block.value.hex() for block in evidence.response.blocks},
        }
    )
    for name, value in opaque_claims(evidence).items():
        claims.setdefault(name, value)
    claims["root_fingerprint"] = verification.root_fingerprint
    return claims
