"""AMD's roots shipped for SEV-SNP: per product line, the ASK (VCEK chains) or ASVK (VLEK
chains) and the ARK, copied from AMD's distribution into ``attestation/roots/``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ...abi.x509 import Certificate, parse_certificates
from ...trust import VendorRoots, read_root_file

#: The product lines whose chains are shipped.
AMD_PRODUCTS = ("milan", "genoa", "turin")


@dataclass(frozen=True)
class AmdRootChain:
    """AMD's intermediate (ASK for VCEK, ASVK for VLEK) and root (ARK) for one product line."""

    product: str  # "milan", "genoa", "turin"
    signing_key: str  # "vcek" or "vlek"
    intermediate: Certificate
    root: Certificate


@cache
def amd_root_chains() -> tuple[AmdRootChain, ...]:
    chains = []
    for product in AMD_PRODUCTS:
        for signing_key in ("vcek", "vlek"):
            intermediate, root = parse_certificates(read_root_file(f"{product}-{signing_key}-chain.pem"))
            chains.append(AmdRootChain(product, signing_key, intermediate, root))
    return tuple(chains)


@cache
def _arks() -> tuple[Certificate, ...]:
    return tuple({chain.root.der: chain.root for chain in amd_root_chains()}.values())


#: The roots an SEV-SNP chain may end at (every shipped ARK).
AMD_ROOTS = VendorRoots("amd", "an AMD root (ARK)", _arks)
