"""AMD SEV-SNP: attestation reports signed by a VCEK or VLEK, their AMD certificate chains and CRLs.

Modules (after google/go-sev-guest's ``abi``/``verify``/``validate`` tree): :mod:`.abi` (the
report's bytes), :mod:`.verify` (signature, chain, CRL), :mod:`.validate` (the ``[sev-snp]``
policy section), :mod:`.claims`, :mod:`.appraise` (the three together), :mod:`.collateral`
(AMD CRLs and VCEKs, given or from the verifier's store), :mod:`.roots` (AMD's shipped roots)
and :mod:`.platform`, the :class:`~attestation.platforms.base.Platform` the registry holds.
"""

#: The platform's registered name.
NAME = "sev-snp"
