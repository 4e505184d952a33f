"""The NVML GPU backend against a fake ``pynvml`` module (the third-party boundary) that
answers with the simulated GPU's evidence, and its binding into a bundle."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from attestation.bundle import appraise_bundle
from attestation.platforms.nvidia.abi import parse_gpu_evidence
from enclave.attester import AttesterError, make_bundle
from enclave.keys import EnclaveKeys
from enclave.nvidia_gpu import GpuUnavailableError, NvmlGpuAttester
from enclave.simulated.attester import SimulatedTdxAttester
from enclave.simulated.gpu import load_or_create_gpu_pki, simulated_gpu_evidence
from enclave_fixtures import MEASUREMENT, NONCE_A, now, shared_simulated_dir, trusting


class FakeNvmlError(Exception):
    pass


class FakePynvml:
    """What pynvml returns: ctypes-like structures with fixed-size arrays and a size field."""

    def __init__(self, gpu_dir, *, cc: int = 1, fail_report: bool = False) -> None:  # noqa: ANN001
        self.pki = load_or_create_gpu_pki(gpu_dir)
        self.cc = cc
        self.fail_report = fail_report
        self.initialised = 0
        self.nonces: list[bytes] = []

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self.initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.initialised -= 1

    def nvmlSystemGetConfComputeState(self):  # noqa: N802, ANN201
        return SimpleNamespace(environment=1, ccFeature=self.cc, devToolsMode=0)

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes):  # noqa: N802, ANN201
        if self.fail_report:
            raise FakeNvmlError("NVML_ERROR_TIMEOUT")
        self.nonces.append(bytes(nonce))
        evidence, self.chain = simulated_gpu_evidence(bytes(nonce), self.pki)
        return SimpleNamespace(
            nonce=list(nonce), attestationReport=list(evidence) + [0] * 64, attestationReportSize=len(evidence)
        )

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int):  # noqa: N802, ANN201
        return SimpleNamespace(
            attestationCertChain=list(self.chain) + [0] * 64, attestationCertChainSize=len(self.chain)
        )


@pytest.fixture(scope="module")
def gpu_dir():  # noqa: ANN201
    return shared_simulated_dir() / "gpu"


def test_nvml_evidence_is_bound_into_the_bundle(gpu_dir) -> None:  # noqa: ANN001
    nvml = FakePynvml(gpu_dir)
    cpu = SimulatedTdxAttester(shared_simulated_dir(), measurement=MEASUREMENT)
    keys = EnclaveKeys()
    bundle = make_bundle(cpu, keys, NONCE_A, gpu=NvmlGpuAttester(nvml=nvml))
    assert nvml.initialised == 0  # shut down again
    assert bundle.gpu is not None and parse_gpu_evidence(bundle.gpu.evidence).nonce == nvml.nonces[0]
    policy = trusting(cpu.pki, nvml.pki.root_fingerprint, require_gpu=True)
    appraisal = appraise_bundle(bundle, expected_nonce=NONCE_A, policy=policy, at=now())
    assert appraisal.accepted, appraisal.reasons


def test_nvml_failures_are_typed(gpu_dir) -> None:  # noqa: ANN001
    with pytest.raises(GpuUnavailableError, match="not in confidential-computing mode"):
        NvmlGpuAttester(nvml=FakePynvml(gpu_dir, cc=0)).evidence(bytes(32))
    nvml = FakePynvml(gpu_dir, fail_report=True)
    with pytest.raises(GpuUnavailableError, match="NVML_ERROR_TIMEOUT"):
        NvmlGpuAttester(nvml=nvml).evidence(bytes(32))
    assert nvml.initialised == 0
    with pytest.raises(AttesterError, match="32 bytes"):
        NvmlGpuAttester(nvml=FakePynvml(gpu_dir)).evidence(bytes(16))
