"""Numba aggregation kernels for the attestfl aggregator (float32 in, float32 out).

A model is flattened by the caller into one 1-D float32 array; a stack of N site
updates is an (N, P) float32 array.
"""
from .accumulator import Accumulator, Contribution
from .dp import add_gaussian_noise, clip_by_l2, l2_norms
from .errors import AggregationError, NonFiniteUpdateError
from .robust import coordinate_median, fedavg, krum, krum_scores, pairwise_sq_distances, trimmed_mean

__all__ = [
    "Accumulator",
    "AggregationError",
    "Contribution",
    "NonFiniteUpdateError",
    "add_gaussian_noise",
    "clip_by_l2",
    "coordinate_median",
    "fedavg",
    "krum",
    "krum_scores",
    "l2_norms",
    "pairwise_sq_distances",
    "trimmed_mean",
]
