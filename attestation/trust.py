"""Trust anchors shipped in the package, and how simulated roots are recognised.

Vendor roots (AMD ARK/ASK/ASVK per product line, Intel SGX Root CA, NVIDIA Device
Identity CA) are public certificates copied from the vendors' distributions.
A simulated root (the software TEE of :mod:`enclave.simulated`) is trusted only
when a policy lists its SHA-256 fingerprint in ``trusted_simulated_roots``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from .abi.x509 import Certificate, parse_certificates

#: Organization name carried by every certificate of the simulated vendor PKIs.
SIMULATED_ORGANIZATION = "attestfl simulated TEE (not hardware)"

AMD_PRODUCTS = ("milan", "genoa", "turin")


@dataclass(frozen=True)
class AmdRootChain:
    """AMD's intermediate (ASK for VCEK, ASVK for VLEK) and root (ARK) for one product line."""

    product: str  # "milan", "genoa", "turin"
    signing_key: str  # "vcek" or "vlek"
    intermediate: Certificate
    root: Certificate


def _read_root_file(name: str) -> bytes:
    return resources.files("attestation").joinpath("roots", name).read_bytes()


@lru_cache(maxsize=None)
def amd_root_chains() -> tuple[AmdRootChain, ...]:
    chains = []
    for product in AMD_PRODUCTS:
        for signing_key in ("vcek", "vlek"):
            intermediate, root = parse_certificates(_read_root_file(f"{product}-{signing_key}-chain.pem"))
            chains.append(AmdRootChain(product, signing_key, intermediate, root))
    return tuple(chains)


@lru_cache(maxsize=None)
def intel_sgx_root_ca() -> Certificate:
    (root,) = parse_certificates(_read_root_file("intel-sgx-root-ca.pem"))
    return root


@lru_cache(maxsize=None)
def nvidia_device_identity_root() -> Certificate:
    (root,) = parse_certificates(_read_root_file("nvidia-device-identity-root.pem"))
    return root


def is_simulated(cert: Certificate) -> bool:
    """True when a certificate names the simulated TEE's organization."""
    return SIMULATED_ORGANIZATION in cert.subject


def vendor_root_fingerprints() -> frozenset[str]:
    roots = [c.root for c in amd_root_chains()] + [intel_sgx_root_ca(), nvidia_device_identity_root()]
    return frozenset(r.fingerprint_sha256 for r in roots)
