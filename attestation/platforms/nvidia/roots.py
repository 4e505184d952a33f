"""NVIDIA's root shipped for GPU evidence: the NVIDIA Device Identity CA."""

from __future__ import annotations

from functools import cache

from ...abi.x509 import Certificate, parse_certificates
from ...trust import VendorRoots, read_root_file


@cache
def nvidia_device_identity_root() -> Certificate:
    (root,) = parse_certificates(read_root_file("nvidia-device-identity-root.pem"))
    return root


def _roots() -> tuple[Certificate, ...]:
    return (nvidia_device_identity_root(),)


#: The roots a GPU attestation chain may end at.
NVIDIA_ROOTS = VendorRoots("nvidia", "the NVIDIA Device Identity CA", _roots)
