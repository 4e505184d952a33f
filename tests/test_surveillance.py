"""Drift surveillance, quarantine, per-site risk and contributor value inside the real
RoundDriver: alerts for exactly the flagged sites and rounds, the quarantine logged before it
is applied and the excluded update absent from the aggregate, the worst site first."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds import RoundDriver, TaskConfig, TaskConfigError
from aggregator.surveillance import ContributionPolicy, DriftRules, federation_risk, subgroup_gaps
from protocol.tensors import encode_tensors, flatten

MODEL = {"w": np.zeros((40, 5), np.float32), "b": np.zeros(5, np.float32)}
SIZE = 205


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def record(self, kind: str, **fields: object) -> None:
        self.seen.append((kind, fields))

    def of(self, kind: str) -> list[dict]:
        return [f for k, f in self.seen if k == kind]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.seen]


def driver(**kwargs: object) -> tuple[RoundDriver, Events]:
    events = Events()
    config = TaskConfig(initial_model=MODEL, **kwargs)  # type: ignore[arg-type]
    config.validate()
    return RoundDriver(config, events=events), events


def submit(d: RoundDriver, site: str, vector: np.ndarray, weight: float = 1.0) -> None:
    digest = hashlib.sha256(site.encode() + vector.tobytes()).digest()
    update = {"w": vector[:200].reshape(40, 5).astype(np.float32), "b": vector[200:].astype(np.float32)}
    d.accept_update(
        site,
        d.round,
        d.attempt,
        update,
        weight,
        digest,
        {"site": site, "round": d.round, "update_sha256": digest.hex()},
    )
    d.close_if_complete()


def play(d: RoundDriver, rounds: int, scaled: str | None = None, scale: float = 10.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=SIZE)
    for _ in range(rounds):
        for site in ("a", "b", "c", "d", "e"):
            update = truth * 0.1 + 0.03 * rng.normal(size=SIZE)
            submit(d, site, update * (scale if site == scaled else 1.0))
    return truth


def test_a_scaled_update_is_flagged_quarantined_before_it_is_applied_and_left_out() -> None:
    rules = DriftRules(norm_ratio=4.0, quarantine=True)
    d, events = driver(rounds=3, min_sites=5, drift=rules)
    truth = play(d, 3, scaled="e")
    alerts = events.of("drift_alert")
    assert {(a["site"], a["round"], a["rule"]) for a in alerts} == {("e", r, "norm_ratio") for r in (1, 2, 3)}
    assert all(a["quarantined"] for a in alerts)
    kinds = events.kinds()
    for quarantine in events.of("quarantine"):
        assert quarantine["sites"] == ["e"] and "norm_ratio" in quarantine["reasons"]["e"]
    # logged before the round that applies it, and the round's participants lack the site
    assert kinds.index("quarantine") < kinds.index("round")
    assert all(set(r["participants"]) == {"a", "b", "c", "d"} for r in events.of("round"))
    final = flatten(d.final_model(), d.spec)
    assert np.linalg.norm(final) < 0.5 * np.linalg.norm(truth)  # 3 rounds of ~0.1 * truth, no 10x poison
    stats = events.of("surveillance")
    assert len(stats) == 3 and stats[0]["sites"]["e"]["quarantined"] and stats[0]["sites"]["e"]["norm"] > 5


def test_without_quarantine_the_alert_fires_but_the_update_is_aggregated() -> None:
    d, events = driver(rounds=1, min_sites=5, drift=DriftRules(norm_ratio=4.0, norm_z=5.0))
    play(d, 1, scaled="e")
    assert {(a["site"], a["rule"]) for a in events.of("drift_alert")} == {("e", "norm_ratio"), ("e", "norm_z")}
    assert not events.of("quarantine") and "e" in events.of("round")[0]["participants"]


def test_quarantine_never_excludes_the_majority() -> None:
    d, events = driver(rounds=1, min_sites=3, drift=DriftRules(min_cosine=0.99, quarantine=True))
    rng = np.random.default_rng(1)
    for site in ("a", "b", "c"):
        submit(d, site, rng.normal(size=SIZE))  # unrelated updates: every one is flagged
    assert len(events.of("drift_alert")) == 3 and not events.of("quarantine")
    assert all(not a["quarantined"] and "not quarantined" in a["note"] for a in events.of("drift_alert"))
    assert len(events.of("round")[0]["participants"]) == 3


def test_metric_drop_alert_names_the_site_and_round() -> None:
    d, events = driver(rounds=3, min_sites=1, drift=DriftRules(metric_drop=0.2))
    reports = {1: {"a": 0.5, "b": 0.5}, 2: {"a": 0.9, "b": 0.92}, 3: {"a": 0.88, "b": 0.55}}
    for r in (1, 2, 3):
        for site, accuracy in reports[r].items():
            d.report_metrics(site, r, {"accuracy": accuracy}, 10)
        submit(d, "a", np.full(SIZE, 0.1))
    (alert,) = events.of("drift_alert")
    assert (alert["site"], alert["round"], alert["rule"]) == ("b", 3, "metric_drop")
    assert alert["value"] == pytest.approx(0.37)
    changes = [e["sites"]["a"]["accuracy_change"] for e in events.of("surveillance")]
    assert changes[0] is None and changes[1] == pytest.approx(0.4) and changes[2] == pytest.approx(-0.02)


def test_evaluation_leads_with_the_worst_site_and_the_largest_subgroup_gap() -> None:
    d, events = driver(rounds=1, min_sites=1)
    d.report_metrics("a", 1, {"accuracy": 0.9, "accuracy[sex=F]": 0.95, "accuracy[sex=M]": 0.85, "auroc": 0.9}, 50)
    d.report_metrics("b", 1, {"accuracy": 0.7, "accuracy[sex=F]": 0.9, "accuracy[sex=M]": 0.5, "ece": 0.2}, 50)
    evaluation = events.of("evaluation")[-1]
    assert list(evaluation)[:4] == ["round", "worst_site", "worst_accuracy", "largest_subgroup_gap"]
    assert evaluation["worst_site"] == "b" and evaluation["worst_accuracy"] == 0.7
    assert evaluation["largest_subgroup_gap"] == {"site": "b", "attribute": "sex", "metric": "accuracy", "gap": 0.4}
    assert subgroup_gaps({"auroc[age=1]": 0.6, "auroc[age=2]": 0.8}, "auroc") == {"age": pytest.approx(0.2)}
    assert federation_risk({})["worst_site"] is None


def test_contribution_released_at_the_end_ranks_the_poisoner_last() -> None:
    d, events = driver(rounds=2, min_sites=5, contribution=ContributionPolicy(release="final", permutations=200))
    rng = np.random.default_rng(3)
    truth = rng.normal(size=SIZE)
    for _ in range(2):
        for site in ("a", "b", "c", "d"):
            submit(d, site, truth + 0.5 * rng.normal(size=SIZE))
        submit(d, "poisoner", -10 * truth)
    per_round = events.of("contribution")
    assert len(per_round) == 2 and all("values" not in c for c in per_round)  # policy: released only at the end
    (release,) = events.of("contribution_release")
    assert release["ranking"][-1] == "poisoner" and release["values"]["poisoner"] < 0
    kinds = events.kinds()
    assert kinds.index("contribution_release") < kinds.index("training_finished")


def test_task_tables_are_read_and_checked(tmp_path: Path) -> None:
    (tmp_path / "m.safetensors").write_bytes(encode_tensors(MODEL))
    table = {
        "initial_model": "m.safetensors",
        "drift": {"norm_ratio": 5.0, "metric_drop": 0.2, "quarantine": True},
        "contribution": {"release": "round", "epsilon": 1.0},
    }
    config = TaskConfig.from_table(table, tmp_path)
    assert config.drift == DriftRules(norm_ratio=5.0, metric_drop=0.2, quarantine=True)
    assert config.contribution == ContributionPolicy(release="round", epsilon=1.0)
    with pytest.raises(TaskConfigError, match=r"task\.drift"):
        TaskConfig.from_table({**table, "drift": {"norm_ratio": 0.5}}, tmp_path)
    with pytest.raises(TaskConfigError, match=r"task\.contribution"):
        TaskConfig.from_table({**table, "contribution": {"release": "always"}}, tmp_path)
    # cards come right after admission (PublishCard), so required cards no longer need evaluate = true
    assert TaskConfig.from_table({**table, "evaluate": False, "cards": {"required": True}}, tmp_path).cards
    with pytest.raises(TaskConfigError, match=r"task\.cards"):
        TaskConfig.from_table({**table, "cards": {"schema": [["age", "tensor"]]}}, tmp_path)
