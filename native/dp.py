"""Norms, clipping and Gaussian noise for central differential privacy."""

from __future__ import annotations

import numba
import numpy as np

from . import _kernels
from ._validate import as_int, as_real, as_stack, as_update
from .errors import AggregationError, NonFiniteUpdateError

_NOISE_CHUNK = 1 << 20


def l2_norms(stack: np.ndarray) -> np.ndarray:
    """(N,) float64 L2 norms of the rows of an (N, P) float32 stack (float64 accumulation)."""
    stack = as_stack(stack)
    n, size = stack.shape
    nchunks = max(1, min(4 * numba.get_num_threads(), size // 4096))
    partial = np.zeros((nchunks, n), dtype=np.float64)
    bad_rows = np.zeros(n, dtype=np.bool_)
    _kernels.sq_norms_kernel(stack, nchunks, partial, bad_rows)
    if bad_rows.any():
        raise NonFiniteUpdateError(int(np.flatnonzero(bad_rows)[0]))
    return np.sqrt(partial.sum(axis=0))


def clip_by_l2(update: np.ndarray, max_norm: float, *, site: int | None = None) -> float:
    """Scale ``update`` in place so its L2 norm is at most ``max_norm``; returns the norm before.

    The scale factor max_norm/norm is computed in float64 and applied in float32, so
    the clipped norm may exceed max_norm by float32 rounding (~1e-7 relative).
    ``site`` only names the update in a ``NonFiniteUpdateError``.
    """
    if isinstance(update, np.ndarray) and update.ndim == 1 and not update.flags.c_contiguous:
        raise AggregationError("clip_by_l2 works in place: update must be C-contiguous")
    update = as_update(update)
    if not update.flags.writeable:
        raise AggregationError("clip_by_l2 works in place: update must be writeable")
    bound = as_real(max_norm, "max_norm")
    if bound <= 0.0:
        raise AggregationError(f"max_norm must be > 0, got {bound}")
    try:
        norm = float(l2_norms(update.reshape(1, -1))[0])
    except NonFiniteUpdateError:
        raise NonFiniteUpdateError(site) from None
    if norm > bound:
        _kernels.scale_kernel(update, bound / norm, update)
    return norm


def add_gaussian_noise(x: np.ndarray, std: float, seed: int | np.random.SeedSequence) -> np.ndarray:
    """Add N(0, std^2) noise to ``x`` in place (and return it); reproducible for a seed.

    The noise is ``numpy.random.Generator(PCG64(seed)).standard_normal(len(x),
    dtype=float32)`` scaled by ``float32(std)``, drawn in 1 Mi-value chunks (the same
    stream as one call), so the same seed gives the same bits on every run and machine
    with the same numpy. PCG64 is not a cryptographic generator and the seed decides
    the noise: the caller must draw the seed from a CSPRNG (e.g. ``secrets.randbits(128)``)
    and keep it secret. Floating-point Gaussian sampling is not a formally verified DP
    mechanism (see Mironov 2012 on floating-point attacks); account for that in the
    privacy analysis.
    """
    if isinstance(x, np.ndarray) and x.ndim == 1 and not x.flags.c_contiguous:
        raise AggregationError("add_gaussian_noise works in place: x must be C-contiguous")
    x = as_update(x, "x")
    if not x.flags.writeable:
        raise AggregationError("add_gaussian_noise works in place: x must be writeable")
    sigma = as_real(std, "std")
    if sigma < 0.0:
        raise AggregationError(f"std must be >= 0, got {sigma}")
    if not isinstance(seed, np.random.SeedSequence):
        seed = as_int(seed, "seed")
        if seed < 0:
            raise AggregationError(f"seed must be >= 0, got {seed}")
    try:
        l2_norms(x.reshape(1, -1))
    except NonFiniteUpdateError:
        raise NonFiniteUpdateError(None, "x holds non-finite values (NaN or inf)") from None
    rng = np.random.Generator(np.random.PCG64(seed))
    scale = np.float32(sigma)
    buf = np.empty(min(_NOISE_CHUNK, x.shape[0]), dtype=np.float32)
    for start in range(0, x.shape[0], _NOISE_CHUNK):
        part = x[start : start + _NOISE_CHUNK]
        noise = buf[: part.shape[0]]
        rng.standard_normal(out=noise, dtype=np.float32)
        noise *= scale
        part += noise
    return x
