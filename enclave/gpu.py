"""Which GPU attester a ``--gpu`` (``attestfl enclave evidence``) or ``gpu =`` (``aggregator.toml``)
choice names: one factory for both."""

from __future__ import annotations

from pathlib import Path

from .attester import AttesterError, GpuAttester

#: No GPU evidence, a CC-mode NVIDIA GPU when one is present, NVML, the simulated GPU.
GPU_CHOICES = ("none", "auto", "nvml", "simulated")


def open_gpu_attester(gpu: str, *, simulated_dir: str | Path | None = None) -> GpuAttester | None:
    """The GPU attester ``gpu`` names (:data:`GPU_CHOICES`): None for ``none`` (and for ``auto``
    without a CC-mode NVIDIA GPU), NVML, or the simulated GPU in ``simulated_dir``/gpu."""
    if gpu not in GPU_CHOICES:
        raise AttesterError(f"unknown GPU {gpu!r}; expected one of {', '.join(GPU_CHOICES)}")
    if gpu == "none":
        return None
    if gpu == "simulated":
        if simulated_dir is None:
            raise AttesterError(
                "the simulated GPU needs a simulated TEE directory (--simulated-dir, or simulated_dir "
                "in the configuration)"
            )
        from .simulated.attester import SimulatedGpuAttester

        return SimulatedGpuAttester(Path(simulated_dir) / "gpu")
    from .nvidia_gpu import NvmlGpuAttester, nvml_cc_gpu_present

    if gpu == "auto" and not nvml_cc_gpu_present():
        return None
    return NvmlGpuAttester()
