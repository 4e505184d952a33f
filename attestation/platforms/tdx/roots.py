"""Intel's root shipped for TDX: the Intel SGX Root CA, the anchor of the PCK chain and of
every collateral issuer chain."""

from __future__ import annotations

from functools import cache

from ...abi.x509 import Certificate, parse_certificates
from ...trust import VendorRoots, read_root_file


@cache
def intel_sgx_root_ca() -> Certificate:
    (root,) = parse_certificates(read_root_file("intel-sgx-root-ca.pem"))
    return root


def _roots() -> tuple[Certificate, ...]:
    return (intel_sgx_root_ca(),)


#: The roots a PCK or collateral issuer chain may end at.
INTEL_ROOTS = VendorRoots("intel", "the Intel SGX Root CA", _roots)
