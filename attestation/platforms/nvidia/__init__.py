"""NVIDIA confidential-computing GPUs: SPDM GET_MEASUREMENTS evidence signed by the GPU's
attestation key, whose chain ends at the NVIDIA Device Identity CA.

Modules: :mod:`.abi` (SPDM request and response, opaque data, the leaf's FWID),
:mod:`.verify` (signature, chain, FWID, nonce), :mod:`.validate` (the ``[nvidia-gpu]``
policy section), :mod:`.rim` (reference integrity manifests), :mod:`.claims`,
:mod:`.appraise`, :mod:`.roots` and :mod:`.platform`, the
:class:`~attestation.platforms.base.Platform` the registry holds. GPU evidence is device
evidence: it binds the verifier's nonce, not report_data, and rides in an evidence bundle's
``gpu`` part beside CPU evidence.
"""

#: The platform's registered name.
NAME = "nvidia-gpu"
