"""Intel TDX: DCAP quotes (version 4 and 5) signed by a quoting enclave whose PCK chain ends at
the Intel SGX Root CA, appraised with Intel's collateral.

Modules (after google/go-tdx-guest's ``abi``/``verify``/``validate`` tree): :mod:`.abi` (the
quote's bytes and the PCK certificate's SGX extensions), :mod:`.collateral_abi` (TCB info and
QE identity documents), :mod:`.verify` (signatures, PCK chain, collateral, TCB status),
:mod:`.validate` (the ``[tdx]`` policy section), :mod:`.claims`, :mod:`.appraise`,
:mod:`.collateral` (given files or the verifier's store), :mod:`.roots` (the Intel SGX Root CA)
and :mod:`.platform`, the :class:`~attestation.platforms.base.Platform` the registry holds.
"""

#: The platform's registered name.
NAME = "tdx"
