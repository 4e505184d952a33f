"""Trust anchors shipped in the package, and the one rule that decides whether a chain's
root is trusted (:func:`trust_root`).

Vendor roots (AMD ARK/ASK/ASVK per product line, Intel SGX Root CA, NVIDIA Device
Identity CA) are public certificates copied from the vendors' distributions.

The rule, identical for SEV-SNP, TDX (PCK chain and every collateral issuer chain) and
NVIDIA GPUs:

* a root that is exactly (DER) a shipped root of the platform's vendor is trusted;
* a root that is marked simulated (:func:`is_simulated`: its subject names
  :data:`SIMULATED_ORGANIZATION`) **and** whose SHA-256 fingerprint the policy lists in
  ``trusted_simulated_roots`` is trusted, always with the same warning
  (:data:`SIMULATED_WARNING`): it proves nothing about hardware;
* anything else is refused: an unlisted simulated root, and a listed fingerprint of a
  certificate that is not marked simulated (the list is for the simulated TEE only; it
  never turns an arbitrary certificate into a vendor root).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Collection

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


#: The platform vendors whose roots :func:`trust_root` knows.
VENDORS = ("amd", "intel", "nvidia")
_VENDOR_ROOT_NAMES = {"amd": "an AMD root (ARK)", "intel": "the Intel SGX Root CA", "nvidia": "the NVIDIA Device Identity CA"}

#: The warning every trusted simulated root yields (after ``{what}: ``).
SIMULATED_WARNING = "ends at a simulated root trusted by the policy (fingerprint {fingerprint}): the evidence is simulated and proves nothing about hardware"


@lru_cache(maxsize=None)
def vendor_roots(vendor: str) -> frozenset[bytes]:
    """The DER of every shipped root of ``vendor`` ("amd", "intel", "nvidia")."""
    if vendor == "amd":
        return frozenset(chain.root.der for chain in amd_root_chains())
    if vendor == "intel":
        return frozenset({intel_sgx_root_ca().der})
    if vendor == "nvidia":
        return frozenset({nvidia_device_identity_root().der})
    raise ValueError(f"unknown vendor {vendor!r}; expected one of {', '.join(VENDORS)}")


@dataclass(frozen=True)
class RootTrust:
    """The verdict of :func:`trust_root` on one chain's root.

    ``reason`` (when not trusted) and ``warning`` (a trusted simulated root) are messages;
    the caller files the reason under its platform's check id (``snp.chain.root``,
    ``tdx.pck.root``, ``tdx.collateral.<part>.root``, ``gpu.chain.root``)."""

    trusted: bool
    simulated: bool
    fingerprint: str
    reason: str | None = None
    warning: str | None = None


def trust_root(root: Certificate, policy: object, *, vendor: str, what: str = "the certificate chain") -> RootTrust:
    """Apply the trust rule of this module to ``root``, the last certificate of a chain.

    ``policy`` is an :class:`attestation.policy.Policy` (or anything with a
    ``trusted_simulated_roots`` attribute), or the collection of fingerprints itself;
    ``vendor`` names whose shipped roots count ("amd", "intel", "nvidia"); ``what`` names
    the chain in messages ("the PCK certificate chain")."""
    listed: Collection[str] = getattr(policy, "trusted_simulated_roots", policy)  # type: ignore[assignment]
    fingerprint = root.fingerprint_sha256
    simulated = is_simulated(root)
    if not simulated and root.der in vendor_roots(vendor):
        return RootTrust(True, False, fingerprint)
    if simulated and fingerprint in listed:
        return RootTrust(True, True, fingerprint, warning=f"{what} {SIMULATED_WARNING.format(fingerprint=fingerprint)}")
    if simulated:
        reason = (f"the evidence is simulated: {what} ends at a simulated root (fingerprint {fingerprint}) that the "
                  "policy does not trust; it proves nothing about hardware")
    elif fingerprint in listed:
        reason = (f"{what} ends at {root.subject!r} (fingerprint {fingerprint}), which is not {_VENDOR_ROOT_NAMES[vendor]}; "
                  "trusted_simulated_roots lists its fingerprint, but only roots of the simulated TEE can be trusted that way")
    else:
        reason = f"{what} ends at {root.subject!r} (fingerprint {fingerprint}), which is not {_VENDOR_ROOT_NAMES[vendor]}"
    return RootTrust(False, simulated, fingerprint, reason=reason)
