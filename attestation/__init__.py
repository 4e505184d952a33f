"""The relying party: parse evidence, verify it, appraise it against a policy.

Layers (after google/go-sev-guest):
- ``attestation.abi``: bytes <-> typed structures, no cryptography;
- ``attestation.verify``: signatures, certificate chains, collateral;
- ``attestation.validate``: appraisal against a policy, one documented field per check.
"""
