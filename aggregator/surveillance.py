"""Federation intelligence inside the TEE: per-site risk, drift surveillance, quarantine and
contributor value, computed from what the aggregator already holds in the clear (every update,
every site's evaluation of the round's model) and released only as logged, signed entries.

Configured in ``aggregator.toml`` beside the task (both tables optional)::

    [task.drift]            # per-site update statistics every round, and alert rules
    norm_ratio = 5.0        # alert: a site's update norm > 5 x the round's median norm
    norm_z = 6.0            # alert: robust z-score of the norm (median / MAD) over the round's sites
    min_cosine = -0.2       # alert: cosine of the update with the round's coordinate-wise median
    metric_drop = 0.2       # alert: the site's accuracy on the round's model fell by more than this
    metric = "accuracy"     # the metric metric_drop watches (higher is better)
    min_sites = 3           # the update rules compare a site with the federation: at least this many
    quarantine = true       # exclude an update an update rule flags (logged before it is applied)

    [task.contribution]     # contributor value (aggregator/contribution.py), every round
    release = "final"       # "final": the mean over rounds when training ends; "round": each round; "none"
    utility = "distance"    # or "cosine" (aggregator/contribution.py: the cosine ignores boosted magnitudes)
    epsilon = 1.0           # optional: Laplace noise on each release (sensitivity stated in the entry)
    permutations = 64
    sample = 16384
    seed = 7                # optional, tests and reproducible audits only: the estimator's random seed
                            # (refused with epsilon: a known seed makes the noise predictable)

Entries (audit log and JSON log; the audit log's tree heads are signed by the enclave key):

* ``evaluation`` (every metrics report) now leads with ``worst_site``, ``worst_accuracy`` and
  ``largest_subgroup_gap`` (see :func:`federation_risk`); the per-site metrics follow.
* ``drift_alert``: ``round, site, rule, value, threshold, quarantined``: one per rule that fires.
* ``quarantine``: ``round, attempt, sites, reasons``: the updates excluded from the round's
  aggregate, logged before the aggregate is computed (the ``round`` entry's ``participants``
  then lack them; ``attestfl audit verify`` checks that).
* ``surveillance``: ``round, sites: {site: {norm, cosine_reference, cosine_aggregate, weight,
  quarantined, <metric>_change}}`` (the change of the site's evaluation of this round's model
  against its previous report; None before its second report).
* ``contribution``: ``round, method, permutations, coordinates, seconds`` and, when the policy
  releases per round, ``values``; ``contribution_release`` when training ends (policy "final").

Memory: with ``quarantine = true`` the round's updates are held until the round closes (the
strategy cannot take an update back); otherwise each is aggregated as it arrives and only a
sample of ``sample`` coordinates per site is kept.
"""

from __future__ import annotations

import collections
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta

from aggregator import contribution
from aggregator.service import EventSink
from attestation.errors import AttestflError
from protocol.config import read_struct


class SurveillanceConfigError(AttestflError, ValueError):
    """``[task.drift]`` or ``[task.contribution]`` is unusable."""


UPDATE_RULES = ("norm_ratio", "norm_z", "min_cosine")
METRIC_RULES = ("metric_drop",)
#: Sites named in one entry at most (the federation's own bound is MAX_SITES).
_MAD_SCALE = 0.6745
#: Coordinates sampled per round for the statistics and the contributor values: 16,384 keeps the
#: estimate's cost at or under the aggregation's from 1M parameters up (benchmarks/contribution.py).
DEFAULT_SAMPLE = 16_384
RECENT_ALERTS = 100
_SUBGROUP = re.compile(r"^(?P<metric>[a-z_]+)\[(?P<attribute>[^=\]]+)=(?P<value>[^\]]*)\]$")


class DriftTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    norm_ratio: Annotated[float, Meta(gt=1)] | None = None
    norm_z: Annotated[float, Meta(gt=0)] | None = None
    min_cosine: Annotated[float, Meta(ge=-1, le=1)] | None = None
    metric_drop: Annotated[float, Meta(gt=0)] | None = None
    metric: Annotated[str, Meta(min_length=1, max_length=64)] = "accuracy"
    min_sites: Annotated[int, Meta(ge=3, le=10_000)] = 3
    quarantine: bool = False


class ContributionTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    release: Literal["final", "round", "none"] = "final"
    utility: Literal["distance", "cosine"] = "distance"
    epsilon: Annotated[float, Meta(gt=0)] | None = None
    permutations: Annotated[int, Meta(ge=2, le=10_000)] = contribution.DEFAULT_PERMUTATIONS
    sample: Annotated[int, Meta(ge=16, le=16_777_216)] = DEFAULT_SAMPLE
    seed: Annotated[int, Meta(ge=0, le=2**62)] | None = None


@dataclass(frozen=True)
class DriftRules:
    norm_ratio: float | None = None
    norm_z: float | None = None
    min_cosine: float | None = None
    metric_drop: float | None = None
    metric: str = "accuracy"
    min_sites: int = 3
    quarantine: bool = False


@dataclass(frozen=True)
class ContributionPolicy:
    release: str = "final"
    utility: str = "distance"
    epsilon: float | None = None
    permutations: int = contribution.DEFAULT_PERMUTATIONS
    sample: int = DEFAULT_SAMPLE
    seed: int | None = None


def read_drift(table: Any) -> DriftRules | None:
    if table is None:
        return None
    t = read_struct(table, DriftTable, "task.drift", SurveillanceConfigError)
    return DriftRules(t.norm_ratio, t.norm_z, t.min_cosine, t.metric_drop, t.metric, t.min_sites, t.quarantine)


def read_contribution(table: Any) -> ContributionPolicy | None:
    if table is None:
        return None
    t = read_struct(table, ContributionTable, "task.contribution", SurveillanceConfigError)
    if t.seed is not None and t.epsilon is not None:
        raise SurveillanceConfigError("[task.contribution] seed with epsilon: a known seed makes the noise predictable")
    return ContributionPolicy(t.release, t.utility, t.epsilon, t.permutations, t.sample, t.seed)


# --- per-site risk -----------------------------------------------------------------------------


def subgroup_gaps(metrics: dict[str, float], metric: str = "accuracy") -> dict[str, float]:
    """attribute -> (best - worst) of ``metric`` over the attribute's reported values."""
    values: dict[str, list[float]] = {}
    for name, value in metrics.items():
        match = _SUBGROUP.match(name)
        if match and match["metric"] == metric:
            values.setdefault(match["attribute"], []).append(value)
    return {attribute: max(v) - min(v) for attribute, v in values.items() if len(v) >= 2}


def federation_risk(per_site: dict[str, dict[str, float]], metric: str = "accuracy") -> dict[str, Any]:
    """The summary that leads with risk, not the mean: the worst site by ``metric`` (ties: by
    site id), its value, the largest subgroup gap (site, attribute, gap) and the worst AUROC and
    calibration error reported."""
    scored = {site: m[metric] for site, m in per_site.items() if metric in m}
    summary: dict[str, Any] = {"worst_site": None, f"worst_{metric}": None, "largest_subgroup_gap": None}
    if scored:
        worst = min(sorted(scored), key=lambda s: scored[s])
        summary["worst_site"], summary[f"worst_{metric}"] = worst, scored[worst]
    gaps = [
        (gap, site, attribute) for site, m in per_site.items() for attribute, gap in subgroup_gaps(m, metric).items()
    ]
    if gaps:
        gap, site, attribute = max(gaps, key=lambda g: (g[0], g[1], g[2]))
        summary["largest_subgroup_gap"] = {"site": site, "attribute": attribute, "metric": metric, "gap": gap}
    aurocs = {s: m["auroc"] for s, m in per_site.items() if "auroc" in m}
    if aurocs:
        summary["worst_auroc"] = min(aurocs.values())
    eces = {s: m["ece"] for s, m in per_site.items() if "ece" in m}
    if eces:
        summary["worst_ece"] = max(eces.values())
    return summary


# --- drift surveillance and contributor value ------------------------------------------------


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else 0.0


@dataclass
class _Round:
    round: int
    attempt: int
    coordinates: np.ndarray
    norms: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    held: dict[str, np.ndarray] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)


class Surveillance:
    """The driver's hooks (:class:`aggregator.rounds.RoundDriver` calls them under its lock)."""

    def __init__(
        self,
        size: int,
        drift: DriftRules | None = None,
        contribution_policy: ContributionPolicy | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        self.size = size
        self.drift = drift
        self.contribution = contribution_policy
        if seed is None and contribution_policy is not None:
            seed = contribution_policy.seed
        self._rng = np.random.default_rng(seed)
        self._round: _Round | None = None
        self._last_metric: dict[str, tuple[int, float]] = {}
        #: site -> the change of its watched metric at its last report (the surveillance entry logs it).
        self._metric_change: dict[str, float] = {}
        #: Prometheus: alerts by rule, updates quarantined, the last round's norms, the last risk summary.
        self.alerts: dict[str, int] = {}
        self.quarantined = 0
        self.norms: dict[str, float] = {}
        self.risk: dict[str, Any] = {}
        self.contribution_seconds: float = 0.0
        #: The dashboard: the last alerts (bounded) and the contributor values as last released.
        self.recent_alerts: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_ALERTS)
        self.released: dict[str, Any] | None = None
        self._values: dict[str, list[float]] = {}

    @property
    def active(self) -> bool:
        return self.drift is not None or self.contribution is not None

    def _sample(self) -> int:
        return self.contribution.sample if self.contribution is not None else DEFAULT_SAMPLE

    def begin(self, round_number: int, attempt: int) -> None:
        if self.active:
            coordinates = contribution.sample_coordinates(self.size, self._sample(), self._rng)
            self._round = _Round(round_number, attempt, coordinates)

    def observe(self, site: str, vector: Any, weight: float) -> bool:
        """Keep an accepted update's statistics; True when the update is held until the round
        closes (quarantine on) instead of being aggregated now."""
        current = self._round
        if current is None:
            return False
        if isinstance(vector, np.ndarray):
            current.norms[site] = float(np.linalg.norm(vector))
            current.samples[site] = np.asarray(vector[current.coordinates], dtype=np.float64)
        else:  # an update read piece by piece (aggregator/spool.py): its norm is known, its sample read
            current.norms[site] = float(vector.norm)
            current.samples[site] = vector.gather(current.coordinates)
        current.weights[site] = float(weight)
        if self.drift is not None and self.drift.quarantine:
            current.held[site] = vector if isinstance(vector, np.ndarray) else vector.vector()
            return True
        return False

    def _update_alerts(self, current: _Round) -> list[dict[str, Any]]:
        rules = self.drift
        sites = sorted(current.norms)
        if rules is None or len(sites) < rules.min_sites:
            return []
        norms = np.array([current.norms[s] for s in sites])
        median = float(np.median(norms))
        mad = float(np.median(np.abs(norms - median)))
        reference = contribution.reference_direction(
            np.stack([current.samples[s] for s in sites]), np.array([current.weights[s] for s in sites])
        )
        alerts = []
        for site, norm in zip(sites, norms, strict=True):
            if rules.norm_ratio is not None and median > 0 and norm > rules.norm_ratio * median:
                alerts.append(_alert(current, site, "norm_ratio", float(norm / median), rules.norm_ratio))
            if rules.norm_z is not None and mad > 0:
                z = _MAD_SCALE * (float(norm) - median) / mad
                if z > rules.norm_z:
                    alerts.append(_alert(current, site, "norm_z", z, rules.norm_z))
            if rules.min_cosine is not None:
                cosine = _cosine(current.samples[site], reference)
                if cosine < rules.min_cosine:
                    alerts.append(_alert(current, site, "min_cosine", cosine, rules.min_cosine))
        return alerts

    def settle(self, events: EventSink, aggregation: Any, received: dict[str, dict[str, Any]], minimum: int) -> None:
        """Before the round's aggregate is computed: raise the update rules' alerts, log the
        quarantine (before it is applied), then add the held updates that are not excluded.
        Excluded sites are removed from ``received`` (the round's participants)."""
        current = self._round
        if current is None:
            return
        alerts = self._update_alerts(current)
        flagged = sorted({a["site"] for a in alerts})
        excluded: list[str] = []
        reason = None
        if self.drift is not None and self.drift.quarantine and flagged:
            remaining = len(current.held) - len(flagged)
            if remaining >= max(1, minimum, math.ceil(len(current.held) / 2)):
                excluded = flagged
            else:
                reason = f"not quarantined: {remaining} update(s) would remain, fewer than the round needs"
        for alert in alerts:
            alert["quarantined"] = alert["site"] in excluded
            if reason is not None:
                alert["note"] = reason
            events.record("drift_alert", **alert)
            self.alerts[alert["rule"]] = self.alerts.get(alert["rule"], 0) + 1
            self.recent_alerts.append(alert)
        if excluded:
            reasons = {
                site: "; ".join(
                    f"{a['rule']} {a['value']:.4g} (threshold {a['threshold']:g})" for a in alerts if a["site"] == site
                )
                for site in excluded
            }
            events.record(
                "quarantine",
                round=current.round,
                attempt=current.attempt,
                sites=excluded,
                reasons=reasons,
                policy="round",
            )
            self.quarantined += len(excluded)
        current.excluded = set(excluded)
        for site in excluded:
            received.pop(site, None)
        kept = [site for site in sorted(current.held) if site not in current.excluded]
        for index, site in enumerate(kept):
            facts = aggregation.add(current.held[site], received[site]["weight"], index) or {}
            received[site].update(facts)
        current.held.clear()

    def after(self, events: EventSink, delta: np.ndarray, *, finished: bool, rounds: int) -> None:
        """After the aggregate is computed, before the ``round`` entry: the per-site statistics
        and the contributor values of the round (over every update received, quarantined or not)."""
        current = self._round
        if current is None or not current.norms:
            return
        sites = sorted(current.norms)
        if self.drift is not None:
            aggregate = np.asarray(delta[current.coordinates], dtype=np.float64)
            reference = contribution.reference_direction(
                np.stack([current.samples[s] for s in sites]), np.array([current.weights[s] for s in sites])
            )
            stats = {
                site: {
                    "norm": current.norms[site],
                    "cosine_reference": _cosine(current.samples[site], reference),
                    "cosine_aggregate": _cosine(current.samples[site], aggregate),
                    "weight": current.weights[site],
                    "quarantined": site in current.excluded,
                    f"{self.drift.metric}_change": self._metric_change.get(site),
                }
                for site in sites
            }
            events.record("surveillance", round=current.round, attempt=current.attempt, sites=stats)
            self.norms = dict(current.norms)
        policy = self.contribution
        if policy is not None:
            started = time.perf_counter()
            result = contribution.estimate(
                {s: current.samples[s] for s in sites},
                current.weights,
                rng=self._rng,
                sample=policy.sample,
                permutations=policy.permutations,
                utility=policy.utility,
            )
            seconds = time.perf_counter() - started
            self.contribution_seconds = seconds
            fields: dict[str, Any] = {
                "round": current.round,
                "method": "consensus-shapley (GTG-Shapley permutation sampling, coordinate-median reference)",
                "utility": policy.utility,
                "permutations": result.permutations,
                "coordinates": result.coordinates,
                "sites": len(sites),
                "seconds": round(seconds, 6),
            }
            clipped = {s: max(-1.0, min(1.0, v)) for s, v in result.values.items()}
            for site, value in clipped.items():
                self._values.setdefault(site, []).append(value)
            if policy.release == "round":
                fields.update(self._release(clipped, sensitivity=2.0))
            events.record("contribution", **fields)
            if "values" in fields:
                self.released = {k: fields[k] for k in ("round", "values", "ranking", "epsilon")}
        if finished and policy is not None and policy.release == "final" and self._values:
            means = {s: float(np.mean(v)) for s, v in self._values.items()}
            fewest = min(len(v) for v in self._values.values())
            release = self._release(means, sensitivity=2.0 / max(1, fewest))
            events.record("contribution_release", rounds=rounds, **release)
            self.released = {"rounds": rounds, **release}

    def _release(self, values: dict[str, float], *, sensitivity: float) -> dict[str, Any]:
        assert self.contribution is not None
        epsilon = self.contribution.epsilon
        if epsilon is not None:
            values = contribution.laplace_release(values, epsilon, sensitivity, self._rng)
        ranking = sorted(values, key=lambda s: (-values[s], s))
        return {"values": values, "ranking": ranking, "epsilon": epsilon, "sensitivity": sensitivity}

    def raise_alert(self, events: EventSink, alert: dict[str, Any]) -> None:
        """An alert raised elsewhere (a dataset card's label shift): logged and counted like the others."""
        events.record("drift_alert", **alert)
        self.alerts[alert["rule"]] = self.alerts.get(alert["rule"], 0) + 1
        self.recent_alerts.append(alert)

    def on_metrics(self, events: EventSink, site: str, round_number: int, metrics: dict[str, float]) -> None:
        """A site's evaluation of the round's model: the metric-change rule."""
        rules = self.drift
        if rules is None or rules.metric not in metrics:
            return
        value = metrics[rules.metric]
        previous = self._last_metric.get(site)
        self._last_metric[site] = (round_number, value)
        if previous is not None and previous[0] < round_number:
            self._metric_change[site] = value - previous[1]
        if rules.metric_drop is None or previous is None or previous[0] >= round_number:
            return
        drop = previous[1] - value
        if drop > rules.metric_drop:
            alert = {
                "round": round_number,
                "site": site,
                "rule": "metric_drop",
                "metric": rules.metric,
                "value": drop,
                "threshold": rules.metric_drop,
                "previous": previous[1],
                "current": value,
                "quarantined": False,
            }
            events.record("drift_alert", **alert)
            self.alerts["metric_drop"] = self.alerts.get("metric_drop", 0) + 1
            self.recent_alerts.append(alert)

    # --- what survives a restart (the sealed checkpoint, aggregator/checkpoint.py) ---------------

    def state(self) -> dict[str, Any]:
        """What a restarted aggregator needs to go on as if uninterrupted: the per-round
        contributor values not yet released, each site's last watched metric, the counters, the
        last release and the random generator's state (so that a restart neither redraws the
        estimator's samples nor the release noise: restarting cannot average the noise away)."""
        state = {
            "values": self._values,
            "last_metric": {site: list(value) for site, value in self._last_metric.items()},
            "metric_change": self._metric_change,
            "alerts": self.alerts,
            "quarantined": self.quarantined,
            "recent_alerts": list(self.recent_alerts),
            "released": self.released,
            "rng": self._rng.bit_generator.state,
        }
        return json.loads(json.dumps(state, default=float))  # plain types only (numpy scalars as floats)

    def restore(self, state: dict[str, Any], round_number: int, attempt: int) -> None:
        """Take back :meth:`state` (from the checkpoint of the round ``round_number`` resumes at)."""
        self._values = {str(site): [float(v) for v in values] for site, values in state["values"].items()}
        self._last_metric = {str(site): (int(v[0]), float(v[1])) for site, v in state["last_metric"].items()}
        self._metric_change = {str(site): float(v) for site, v in state["metric_change"].items()}
        self.alerts = {str(rule): int(n) for rule, n in state["alerts"].items()}
        self.quarantined = int(state["quarantined"])
        self.recent_alerts.extend(state["recent_alerts"])
        self.released = state["released"]
        bit_generator = self._rng.bit_generator
        if state["rng"].get("bit_generator") == type(bit_generator).__name__:
            bit_generator.state = state["rng"]
        self.begin(round_number, attempt)  # the open round's sample, drawn as the uninterrupted run drew it


def _alert(current: _Round, site: str, rule: str, value: float, threshold: float) -> dict[str, Any]:
    return {
        "round": current.round,
        "attempt": current.attempt,
        "site": site,
        "rule": rule,
        "value": value,
        "threshold": threshold,
    }


__all__ = [
    "ContributionPolicy",
    "DriftRules",
    "Surveillance",
    "SurveillanceConfigError",
    "federation_risk",
    "read_contribution",
    "read_drift",
    "subgroup_gaps",
]
