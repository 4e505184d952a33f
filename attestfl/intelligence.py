"""The federation-intelligence part of the demo's summary and table, from the aggregator's own
records (its JSON log, the same entries as its audit log): per round the worst site and the
largest subgroup gap (leading, before the mean), the drift alerts, the quarantines, the
contributor values as released, and each site's recalibration before/after."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

#: The demo's features (scikit-learn's breast-cancer data), in order: the task's dataset-card schema.
_MEASURES = (
    "radius",
    "texture",
    "perimeter",
    "area",
    "smoothness",
    "compactness",
    "concavity",
    "concave points",
    "symmetry",
    "fractal dimension",
)
FEATURE_NAMES = (
    tuple(f"mean {m}" for m in _MEASURES)
    + tuple(f"{m} error" for m in _MEASURES)
    + tuple(f"worst {m}" for m in _MEASURES)
)


def cards_task_toml(features: Sequence[str], *, label_shift: float = 0.3) -> str:
    """A ``[task.cards]`` table requiring every site's card to have these float features."""
    schema = ", ".join(f'["{name}", "float"]' for name in features)
    return f"[task.cards]\nschema = [{schema}]\nrequired = true\nlabel_shift = {label_shift}\n"


def summarise_intelligence(events: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    evaluations: dict[int, dict[str, Any]] = {}
    final_metrics: dict[str, dict[str, float]] = {}
    alerts: list[dict[str, Any]] = []
    quarantined: dict[int, list[str]] = {}
    released: dict[str, Any] | None = None
    contribution_seconds: list[float] = []
    aggregation_seconds: list[float] = []
    for event in events:
        kind = event["message"]
        if kind == "evaluation":
            evaluations[event["round"]] = event  # the last one of a round has every site's report
        elif kind == "metrics" and event["round"] == rounds + 1:
            final_metrics[event["site"]] = event["metrics"]
        elif kind == "drift_alert":
            alerts.append(
                {k: event[k] for k in ("round", "site", "rule", "value", "threshold", "quarantined") if k in event}
            )
        elif kind == "quarantine":
            quarantined[event["round"]] = list(event["sites"])
        elif kind == "contribution":
            contribution_seconds.append(event["seconds"])
            if "values" in event:
                released = {k: event[k] for k in ("round", "values", "ranking", "epsilon")}
        elif kind == "contribution_release":
            released = {k: event[k] for k in ("rounds", "values", "ranking", "epsilon")}
        elif kind == "round":
            aggregation_seconds.append(event.get("aggregation_seconds", 0.0))
    per_round = []
    for r in range(1, rounds + 1):
        evaluation = evaluations.get(r + 1, {})  # round r's model is evaluated as round r + 1's
        per_round.append(
            {
                "round": r,
                "worst_site": evaluation.get("worst_site"),
                "worst_accuracy": evaluation.get("worst_accuracy"),
                "largest_subgroup_gap": evaluation.get("largest_subgroup_gap"),
            }
        )
    recalibrated = {
        site: {k.removeprefix("recalibration."): v for k, v in m.items() if k.startswith("recalibration.")}
        for site, m in final_metrics.items()
        if any(k.startswith("recalibration.") for k in m)
    }
    return {
        "rounds": per_round,
        "alerts": alerts,
        "quarantined": {str(r): sites for r, sites in sorted(quarantined.items())},
        "contribution": released,
        "contribution_seconds": contribution_seconds,
        "aggregation_seconds": aggregation_seconds,
        "recalibration": recalibrated,
    }


def print_intelligence(intelligence: dict[str, Any], say: Callable[[str], None]) -> None:
    """Risk first: per round the worst site and the largest subgroup gap; then alerts,
    quarantines, contributor value and recalibration."""
    say("")
    say(f"{'round':>5}  {'worst site':>14}  {'worst acc':>9}  largest subgroup gap")
    for row in intelligence["rounds"]:
        worst = row["worst_site"] or "-"
        accuracy = f"{row['worst_accuracy']:.4f}" if row["worst_accuracy"] is not None else "-"
        gap = row["largest_subgroup_gap"]
        gap_text = f"{gap['gap']:.4f} ({gap['site']}, {gap['attribute']})" if gap else "-"
        say(f"{row['round']:>5}  {worst:>14}  {accuracy:>9}  {gap_text}")
    for alert in intelligence["alerts"]:
        action = "  QUARANTINED" if alert.get("quarantined") else ""
        say(
            f"drift alert: round {alert['round']} {alert['site']}: {alert['rule']} {alert['value']:.4g} "
            f"(threshold {alert['threshold']:g}){action}"
        )
    released = intelligence["contribution"]
    if released is not None:
        noise = f", Laplace noise epsilon {released['epsilon']:g}" if released.get("epsilon") else ""
        say(f"contributor value (consensus Shapley{noise}), best first:")
        for site in released["ranking"]:
            say(f"  {site:>14}  {released['values'][site]:+.4f}")
    for site, values in sorted(intelligence["recalibration"].items()):
        say(
            f"recalibration {site}: temperature {values.get('temperature', float('nan')):.3f}, "
            f"ECE {values.get('ece_before', float('nan')):.4f} -> {values.get('ece_after', float('nan')):.4f}, "
            f"loss {values.get('loss_before', float('nan')):.4f} -> {values.get('loss_after', float('nan')):.4f}"
        )


__all__ = ["print_intelligence", "summarise_intelligence"]
