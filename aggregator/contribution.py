"""Contributor value inside the TEE: each site's Shapley value for agreeing with the federation's
consensus, estimated every round from the updates the aggregator already holds.

Method (documented so a site can check what it is scored on):

* **Utility** of a set of sites S: the cosine similarity between the FedAvg aggregate of S's
  updates and a *reference* direction, the coordinate-wise median of all the round's updates
  (robust to a minority of poisoners; with fewer than three sites, the plain FedAvg of all).
  It rewards updates that move the model where the federation as a whole moves it. The
  aggregator holds no data, so this is a data-free utility: it measures consensus, not
  accuracy on anyone's patients, and a site whose honest data differ (a rare subpopulation)
  scores lower than it deserves. Read scores with that in mind.
  ``utility="distance"``: max(-1, 1 - ||aggregate(S) - reference|| / ||reference||) instead (the empty
  set's aggregate is zero: utility 0, as for the cosine). The cosine ignores magnitudes, so a
  site that boosts its honest update (scaled by 20) still scores well under it; the distance
  penalises it, and ranks duplicated and noisy sites as the cosine does.
* **Shapley value** of each site for that utility, estimated by permutation sampling (in
  antithetic pairs: each permutation and its reverse) with within-round truncation as in
  GTG-Shapley (Liu et al., 2022): along each random permutation
  the marginal gains are accumulated until the prefix's utility is within ``truncation`` of
  the full set's; the rest get no gain. Duplicated sites share their value; a site sending
  noise gains little; a poisoner (scaled or sign-flipped updates) gets a negative value.
* **Cost**: utilities are computed on a fresh random sample of ``sample`` coordinates of the
  updates (kept inside the TEE, drawn anew every round, so a site cannot know which of its
  coordinates are scored); the Gram matrix of the sampled rows costs O(N² · sample) once, then
  one permutation costs O(N²), independent of the model's size; ``permutations`` bounds the
  work. The aggregation itself costs O(N · P).

The scores never leave the TEE raw: :mod:`aggregator.surveillance` aggregates them over rounds,
signs them with the enclave key and releases them as the task's policy allows (optionally
with Laplace noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_SAMPLE = 65536
DEFAULT_PERMUTATIONS = 64
DEFAULT_TRUNCATION = 1e-3
UTILITIES = ("cosine", "distance")


@dataclass(frozen=True)
class ContributionEstimate:
    """One round's estimate: site -> Shapley value (the values add up to the full set's utility)."""

    values: dict[str, float]
    utility: float  # the full set's utility
    permutations: int
    coordinates: int


def sample_coordinates(size: int, sample: int, rng: np.random.Generator) -> np.ndarray:
    """``sample`` distinct coordinates of an update of ``size`` (all of them when it is small)."""
    if size <= sample:
        return np.arange(size)
    return np.sort(rng.choice(size, size=sample, replace=False))


def reference_direction(samples: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The coordinate-wise median of the sites' sampled updates (three sites or more), else their weighted mean."""
    n = samples.shape[0]
    if n >= 3:
        ordered = np.sort(samples, axis=0)  # a sort of N values per column: faster than np.median for small N
        middle = n // 2
        return ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2.0
    return (weights[:, None] * samples).sum(axis=0) / weights.sum()


def _utilities(
    utility: str, dot: np.ndarray, squared: np.ndarray, weight: np.ndarray, reference_norm: float
) -> np.ndarray:
    """The utility of sets from their sums' dot products with the reference, squared norms and weights."""
    norm = np.sqrt(np.maximum(squared, 0.0))
    if reference_norm == 0.0:
        return np.zeros_like(dot)
    if utility == "cosine":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(norm > 0.0, dot / (norm * reference_norm), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = squared / weight**2 - 2.0 * dot / weight + reference_norm**2
        value = np.maximum(-1.0, 1.0 - np.sqrt(np.maximum(distance, 0.0)) / reference_norm)  # bounded, like the cosine
    return np.where(weight > 0.0, value, 0.0)


def shapley_consensus(
    samples: np.ndarray,
    weights: np.ndarray,
    *,
    rng: np.random.Generator,
    permutations: int = DEFAULT_PERMUTATIONS,
    truncation: float = DEFAULT_TRUNCATION,
    utility: str = "cosine",
) -> tuple[np.ndarray, float]:
    """Shapley values of the rows of ``samples`` (a row per site, a column per sampled coordinate)
    for the consensus utility, and the full set's utility. ``weights``: the sites' FedAvg weights."""
    n = samples.shape[0]
    if n == 0:
        return np.zeros(0), 0.0
    if utility not in UTILITIES:
        raise ValueError(f"utility must be one of {', '.join(UTILITIES)}")
    weights = np.asarray(weights, dtype=np.float64)
    samples = np.asarray(samples, dtype=np.float64)
    reference = reference_direction(samples, weights)
    weighted = weights[:, None] * samples
    reference_norm = float(np.linalg.norm(reference))
    # Every utility is a function of a prefix sum of the weighted rows: its dot product with the
    # reference, its squared norm and its weight. From the Gram matrix of the rows, all of them
    # for every permutation cost O(permutations * N^2), not O(permutations * N * coordinates).
    gram = weighted @ weighted.T
    dots = weighted @ reference
    totals = (np.array([dots.sum()]), np.array([gram.sum()]), np.array([weights.sum()]))
    full = float(_utilities(utility, *totals, reference_norm)[0])
    orders_list: list[np.ndarray] = []
    for _ in range((permutations + 1) // 2):
        order = rng.permutation(n)
        orders_list += [order, order[::-1]]  # antithetic pairs: a permutation and its reverse (lower variance)
    orders = np.array(orders_list[:permutations])  # (permutations, n)
    permuted = gram[orders[:, :, None], orders[:, None, :]]  # each permutation's Gram matrix, in its order
    # squared norm of the first k rows' sum: the sum of the leading k x k block
    rows = np.diagonal(permuted, axis1=1, axis2=2) + 2.0 * np.tril(permuted, -1).sum(axis=2)
    squared = np.cumsum(rows, axis=1)
    dot = np.cumsum(dots[orders], axis=1)
    weight = np.cumsum(weights[orders], axis=1)
    prefix = _utilities(utility, dot, squared, weight, reference_norm)
    before = np.concatenate([np.zeros((orders.shape[0], 1)), prefix[:, :-1]], axis=1)  # the empty set's utility: 0
    # GTG-Shapley within-round truncation: once a prefix is within ``truncation`` of the full
    # set's utility, the rest of that permutation adds nothing.
    active = np.logical_and.accumulate(np.abs(full - before) >= truncation, axis=1)
    values = np.zeros(n)
    np.add.at(values, orders, np.where(active, prefix - before, 0.0))
    return values / permutations, full


def estimate(
    updates: dict[str, np.ndarray],
    weights: dict[str, float],
    *,
    rng: np.random.Generator,
    sample: int = DEFAULT_SAMPLE,
    permutations: int = DEFAULT_PERMUTATIONS,
    truncation: float = DEFAULT_TRUNCATION,
    utility: str = "cosine",
) -> ContributionEstimate:
    """One round's contributor values from the sites' flattened updates (all the same size)."""
    sites = sorted(updates)
    if not sites:
        return ContributionEstimate({}, 0.0, 0, 0)
    size = updates[sites[0]].size
    coordinates = sample_coordinates(size, sample, rng)
    samples = np.stack([np.asarray(updates[s], dtype=np.float32).reshape(-1)[coordinates] for s in sites])
    values, full = shapley_consensus(
        samples,
        np.array([weights[s] for s in sites]),
        rng=rng,
        permutations=permutations,
        truncation=truncation,
        utility=utility,
    )
    return ContributionEstimate(
        {s: float(v) for s, v in zip(sites, values, strict=True)}, full, permutations, int(coordinates.size)
    )


def laplace_release(
    values: dict[str, float], epsilon: float, sensitivity: float, rng: np.random.Generator
) -> dict[str, float]:
    """``values`` with Laplace noise of scale sensitivity/epsilon (epsilon-DP for one release)."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError("epsilon must be a positive finite number")
    scale = sensitivity / epsilon
    return {site: float(v + rng.laplace(0.0, scale)) for site, v in values.items()}


__all__ = [
    "ContributionEstimate",
    "estimate",
    "laplace_release",
    "reference_direction",
    "sample_coordinates",
    "shapley_consensus",
]
