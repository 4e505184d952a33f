"""The attester side of the toy platform (``tests/toy_platform.py``): a CPU TEE that answers
``evidence(report_data)`` with toy evidence, so an evidence bundle, a site and the aggregator's
admission handle it through the registry like any other platform."""

from __future__ import annotations

from pathlib import Path

from enclave.interface import Attester, CpuEvidence, check_report_data
from toy_platform import NAME, ToyVendor


class ToyAttester(Attester):
    """Toy evidence of launch measurement ``measurement`` (32 bytes), signed by the toy vendor
    kept in ``vendor_dir``; the vendor's root travels as the bundle's certificate."""

    name = "toy"

    def __init__(self, vendor_dir: str | Path, measurement: bytes, *, debug: bool = False) -> None:
        if len(measurement) != 32:
            raise ValueError("a toy measurement is 32 bytes")
        self.vendor = ToyVendor.load_or_create(Path(vendor_dir))
        self.measurement = measurement
        self.debug = debug

    @property
    def launch_measurement(self) -> bytes:
        return self.measurement

    def evidence(self, report_data: bytes) -> CpuEvidence:
        evidence = self.vendor.evidence(
            measurement=self.measurement, report_data=check_report_data(report_data), debug=self.debug
        )
        return CpuEvidence(NAME, evidence, (self.vendor.root_der,), source=self.name)
