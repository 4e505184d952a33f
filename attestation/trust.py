"""The one rule that decides whether a chain's root is trusted (:func:`trust_root`), and how a
platform names the roots it ships (:class:`VendorRoots`).

Vendor roots (AMD ARK/ASK/ASVK per product line, Intel SGX Root CA, NVIDIA Device Identity
CA) are public certificates copied from the vendors' distributions into ``attestation/roots/``
(:func:`read_root_file`); each platform package says which are its own
(``attestation.platforms.<name>.roots``) and hands them to :func:`trust_root`.

The rule, identical for every platform (SEV-SNP, TDX's PCK chain and every collateral issuer
chain, NVIDIA GPUs, a third party's):

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

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from importlib import resources

from .abi.x509 import Certificate

#: Organization name carried by every certificate of the simulated vendor PKIs.
SIMULATED_ORGANIZATION = "attestfl simulated TEE (not hardware)"

#: The warning every trusted simulated root yields (after ``{what}: ``).
SIMULATED_WARNING = (
    "ends at a simulated root trusted by the policy (fingerprint {fingerprint}): "
    "the evidence is simulated and proves nothing about hardware"
)


def read_root_file(name: str) -> bytes:
    """The bytes of a root file shipped in ``attestation/roots/``."""
    return resources.files("attestation").joinpath("roots", name).read_bytes()


@dataclass(frozen=True)
class VendorRoots:
    """A vendor's roots as a platform ships them: ``vendor`` ("amd"), ``description`` as a
    refusal names them ("an AMD root (ARK)"), ``load`` returns the root certificates (it
    should cache: it is called on every appraisal)."""

    vendor: str
    description: str
    load: Callable[[], Sequence[Certificate]]

    def contains(self, root: Certificate) -> bool:
        """True when ``root`` is exactly (DER) one of the shipped roots."""
        return any(root.der == shipped.der for shipped in self.load())


def is_simulated(cert: Certificate) -> bool:
    """True when a certificate names the simulated TEE's organization."""
    return SIMULATED_ORGANIZATION in cert.subject


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


def _listed(policy: object) -> Collection[str]:
    listed = getattr(policy, "trusted_simulated_roots", policy)
    if isinstance(listed, (frozenset, set, tuple, list)):
        return listed
    raise TypeError(f"trust_root: expected a policy or a collection of fingerprints, got {type(policy).__name__}")


def trust_root(
    root: Certificate, policy: object, *, vendor: VendorRoots, what: str = "the certificate chain"
) -> RootTrust:
    """Apply the trust rule of this module to ``root``, the last certificate of a chain.

    ``policy`` is an :class:`attestation.policy.Policy` (or anything with a
    ``trusted_simulated_roots`` attribute), or the collection of fingerprints itself;
    ``vendor`` the platform's roots (``registry.get(name).roots``); ``what`` names the chain
    in messages ("the PCK certificate chain")."""
    listed = _listed(policy)
    fingerprint = root.fingerprint_sha256
    simulated = is_simulated(root)
    if not simulated and vendor.contains(root):
        return RootTrust(True, False, fingerprint)
    if simulated and fingerprint in listed:
        return RootTrust(True, True, fingerprint, warning=f"{what} {SIMULATED_WARNING.format(fingerprint=fingerprint)}")
    if simulated:
        reason = (
            f"the evidence is simulated: {what} ends at a simulated root (fingerprint {fingerprint}) that the "
            "policy does not trust; it proves nothing about hardware"
        )
    elif fingerprint in listed:
        reason = (
            f"{what} ends at {root.subject!r} (fingerprint {fingerprint}), which is not {vendor.description}; "
            "trusted_simulated_roots lists its fingerprint, but only roots of the simulated TEE can be trusted that way"
        )
    else:
        reason = f"{what} ends at {root.subject!r} (fingerprint {fingerprint}), which is not {vendor.description}"
    return RootTrust(False, simulated, fingerprint, reason=reason)


__all__ = [
    "SIMULATED_ORGANIZATION",
    "SIMULATED_WARNING",
    "RootTrust",
    "VendorRoots",
    "is_simulated",
    "read_root_file",
    "trust_root",
]
