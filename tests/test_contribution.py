"""Contributor value: on a synthetic federation with known duplicated, noisy and poisoning
sites, the consensus Shapley estimate ranks them as expected, and sums to the full utility."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.contribution import estimate, laplace_release


def _federation(seed: int = 0, size: int = 200_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=size).astype(np.float32)
    honest = {f"honest-{i}": (truth + 0.5 * rng.normal(size=size)).astype(np.float32) for i in range(4)}
    updates = dict(honest)
    updates["duplicate"] = honest["honest-0"].copy()  # a copy of another site's update
    updates["noisy"] = (0.2 * truth + 3.0 * rng.normal(size=size)).astype(np.float32)  # mostly noise
    updates["poisoner"] = (-10.0 * truth).astype(np.float32)  # sign-flipped and scaled
    return updates


def test_the_ranking_puts_the_poisoner_last_and_the_noisy_site_below_the_honest_ones() -> None:
    updates = _federation()
    result = estimate(updates, {site: 1.0 for site in updates}, rng=np.random.default_rng(1), permutations=1000)
    values = result.values
    assert min(values, key=values.get) == "poisoner" and values["poisoner"] < 0
    assert values["noisy"] < min(v for s, v in values.items() if s.startswith("honest"))
    assert sum(values.values()) == pytest.approx(result.utility, abs=0.02)  # efficiency (up to truncation)
    # the duplicate and the site it copies score alike
    assert abs(values["duplicate"] - values["honest-0"]) < 0.04


def test_cost_does_not_grow_with_the_model() -> None:
    small = estimate(_federation(size=70_000), {s: 1.0 for s in _federation(size=10)}, rng=np.random.default_rng(2))
    assert small.coordinates == 65_536


def test_release_with_laplace_noise() -> None:
    noisy = laplace_release({"a": 0.5, "b": 0.1}, epsilon=1.0, sensitivity=0.01, rng=np.random.default_rng(3))
    assert set(noisy) == {"a", "b"} and abs(noisy["a"] - 0.5) < 0.2
    with pytest.raises(ValueError):
        laplace_release({"a": 0.5}, epsilon=0.0, sensitivity=1.0, rng=np.random.default_rng(3))


def test_the_distance_utility_also_puts_a_boosting_site_last() -> None:
    """A site that scales its honest update by 20 agrees with the consensus in direction (the
    cosine utility cannot see it) but not in magnitude: the distance utility ranks it last, and
    still ranks the noisy site below the honest ones and the duplicate with its original."""
    updates = _federation(size=50_000)
    del updates["poisoner"]
    updates["booster"] = 20.0 * updates["honest-1"]
    weights = {site: 1.0 for site in updates}
    result = estimate(updates, weights, rng=np.random.default_rng(4), permutations=400, utility="distance")
    values = result.values
    assert min(values, key=values.get) == "booster" and values["booster"] < 0
    assert values["noisy"] < min(v for s, v in values.items() if s.startswith("honest"))
    assert abs(values["duplicate"] - values["honest-0"]) < 0.15 * values["honest-0"]  # sampling error
    assert sum(values.values()) == pytest.approx(result.utility, abs=0.02)
    cosine = estimate(updates, weights, rng=np.random.default_rng(4), permutations=400).values
    assert min(cosine, key=cosine.get) != "booster"  # why the aggregator uses the distance by default
    with pytest.raises(ValueError, match="utility"):
        estimate(updates, weights, rng=np.random.default_rng(4), utility="accuracy")
