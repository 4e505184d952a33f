"""GPU evidence from an NVIDIA confidential-computing GPU through NVML.

``nvidia-ml-py`` (module ``pynvml``) is imported only when this backend is used, and the
backend is used only when the system reports confidential computing enabled
(``nvmlSystemGetConfComputeState().ccFeature``). For a 32-byte nonce it calls
``nvmlDeviceGetConfComputeGpuAttestationReport`` (the SPDM GET_MEASUREMENTS request and
signed response, :mod:`attestation.platforms.nvidia.abi`) and ``nvmlDeviceGetConfComputeGpuCertificate``
(the attestation certificate chain, PEM, leaf first).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .interface import AttesterError, GpuAttester, GpuEvidence

NONCE_SIZE = 32
MAX_REPORT_BYTES = 32 * 1024
MAX_CHAIN_BYTES = 32 * 1024


class GpuUnavailableError(AttesterError):
    """No NVIDIA GPU in confidential-computing mode can be attested here."""


def _load_nvml() -> ModuleType:
    try:
        import pynvml
    except ImportError as exc:
        raise GpuUnavailableError(
            "GPU attestation needs nvidia-ml-py (pip install nvidia-ml-py), which is not installed"
        ) from exc
    return pynvml


def _bytes(array: Any, size: int, limit: int, what: str) -> bytes:
    if not 0 < int(size) <= limit:
        raise AttesterError(f"NVML returned a {what} of {size} bytes (limit {limit})")
    return bytes(bytearray(array[: int(size)]))


class NvmlGpuAttester(GpuAttester):
    """GPU ``index`` through NVML. ``nvml``: the pynvml module (default: imported lazily)."""

    name = "nvml"

    def __init__(self, index: int = 0, *, nvml: ModuleType | Any | None = None) -> None:
        self.index = index
        self._nvml = nvml

    def _module(self) -> Any:
        if self._nvml is None:
            self._nvml = _load_nvml()
        return self._nvml

    def evidence(self, nonce: bytes) -> GpuEvidence:
        if len(nonce) != NONCE_SIZE:
            raise AttesterError(f"the GPU nonce must be {NONCE_SIZE} bytes")
        nvml = self._module()
        try:
            nvml.nvmlInit()
        except Exception as exc:  # pynvml raises NVMLError subclasses created at runtime
            raise GpuUnavailableError(f"NVML cannot be initialised: {exc}") from exc
        try:
            state = nvml.nvmlSystemGetConfComputeState()
            if not getattr(state, "ccFeature", 0):
                raise GpuUnavailableError(
                    "the system's NVIDIA GPUs are not in confidential-computing mode (ccFeature off)"
                )
            handle = nvml.nvmlDeviceGetHandleByIndex(self.index)
            report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, bytes(nonce))
            chain = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
            return GpuEvidence(
                _bytes(
                    report.attestationReport, report.attestationReportSize, MAX_REPORT_BYTES, "GPU attestation report"
                ),
                _bytes(
                    chain.attestationCertChain, chain.attestationCertChainSize, MAX_CHAIN_BYTES, "GPU certificate chain"
                ),
            )
        except AttesterError:
            raise
        except Exception as exc:
            raise GpuUnavailableError(f"NVML GPU attestation failed: {exc}") from exc
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down must not hide the real result
                pass


def nvml_cc_gpu_present() -> bool:
    """True when nvidia-ml-py is installed, NVML starts and confidential computing is on."""
    try:
        nvml = _load_nvml()
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - any failure means "no CC GPU here"
        return False
    try:
        return bool(getattr(nvml.nvmlSystemGetConfComputeState(), "ccFeature", 0)) and nvml.nvmlDeviceGetCount() > 0
    except Exception:  # noqa: BLE001 - as above
        return False
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - a failed shutdown changes no answer
            pass
