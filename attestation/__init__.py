"""The relying party: parse evidence, verify it, appraise it against a policy.

Platforms are plug-ins (:mod:`attestation.platforms`): one package per kind of evidence
(``platforms/snp``, ``platforms/tdx``, ``platforms/nvidia``, or a third party's registered
through the ``attestfl.platforms`` entry point group), each with the layers of
google/go-sev-guest:

- ``abi``: bytes <-> typed structures, no cryptography;
- ``verify``: signatures, certificate chains, collateral;
- ``validate``: appraisal against its policy section, one documented field per check;
- ``claims``: what an appraisal reports (the platform-neutral claims first).

What every platform shares stays here: the registry lookups (:mod:`.appraise` raw evidence,
:mod:`.bundle` evidence bundles and
:mod:`.bundle_abi` their wire format, :mod:`.evidence` either), the policy (:mod:`.policy`), the
one trust rule (:mod:`.trust`), the verifier's collateral store (:mod:`.collateral`),
X.509 (:mod:`.abi.x509`), chains and signatures (:mod:`.verify.chain`) and the typed policy
readers (:mod:`.validate.fields`). Nothing here names a platform.
"""
