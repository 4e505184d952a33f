"""Rounds inside the aggregator: quorum and deadline, retries, central DP, robust strategies
against a Byzantine site (real local training on the breast-cancer data, real RoundDriver)."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from aggregator.rounds import DpConfig, RoundDriver, TaskConfig, TaskConfigError
from aggregator.service import UpdateRefused
from aggregator.strategies import Krum, StrategyError, make_strategy
from attestfl.demo import split_non_iid
from protocol.tensors import flatten

MODEL = {"w": np.zeros((30, 2), np.float32), "b": np.zeros(2, np.float32)}


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def record(self, kind: str, **fields: object) -> None:
        self.seen.append((kind, fields))

    def of(self, kind: str) -> list[dict]:
        return [f for k, f in self.seen if k == kind]


def driver(**kwargs: object) -> tuple[RoundDriver, Events]:
    events = Events()
    config = TaskConfig(initial_model=MODEL, **kwargs)  # type: ignore[arg-type]
    config.validate()
    return RoundDriver(config, events=events), events


def submit(d: RoundDriver, site: str, delta: dict[str, np.ndarray], weight: float = 1.0) -> None:
    digest = hashlib.sha256(site.encode()).digest()
    d.accept_update(
        site, d.round, d.attempt, delta, weight, digest, {"site": site, "round": d.round, "update_sha256": digest.hex()}
    )
    d.close_if_complete()


def const(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, value, np.float32) for k, v in MODEL.items()}


def test_round_closes_at_quorum_of_live_sites_with_weighted_mean() -> None:
    d, events = driver(rounds=2, min_sites=2)
    d.live_sites = lambda: 3
    submit(d, "a", const(1.0), 1)
    submit(d, "b", const(4.0), 3)
    assert d.round == 1  # a third live site may still report
    submit(d, "c", const(0.0), 0.000001)
    assert d.round == 2
    assert np.allclose(flatten(d.final_model(), d.spec), (1 * 1 + 4 * 3) / 4.000001, atol=1e-4)
    record = events.of("round")[0]
    assert set(record["participants"]) == {"a", "b", "c"} and record["model_sha256"]


def test_duplicates_wrong_round_and_finished() -> None:
    d, _ = driver(rounds=1, min_sites=2)
    submit(d, "a", const(1.0))
    with pytest.raises(UpdateRefused, match="already submitted"):
        submit(d, "a", const(1.0))
    with pytest.raises(UpdateRefused, match="not open"):
        d.check_upload("b", 2, 1)
    submit(d, "b", const(1.0))
    assert d.finished
    with pytest.raises(UpdateRefused, match="finished"):
        d.check_upload("c", 2, 1)


def test_deadline_with_quorum_closes_and_without_retries() -> None:
    d, events = driver(rounds=2, min_sites=2, round_deadline=0.05)
    d.live_sites = lambda: 5
    submit(d, "a", const(1.0))
    time.sleep(0.1)
    d.tick()  # one update, quorum 2: the round is retried, not aggregated
    assert d.round == 1 and d.task().attempt == 2 and events.of("round_retry")
    submit(d, "a", const(1.0))  # the retried round accepts the site again
    submit(d, "b", const(3.0))
    time.sleep(0.1)
    d.tick()  # quorum reached by the deadline: aggregated without the stragglers
    assert d.round == 2 and set(events.of("round")[0]["participants"]) == {"a", "b"}


def test_non_finite_update_is_refused_before_aggregation() -> None:
    d, _ = driver(rounds=1, min_sites=1, strategy=make_strategy("median"))
    bad = const(1.0)
    bad["b"][0] = np.inf
    with pytest.raises(Exception, match=r"(?i)non-finite|nan|inf"):
        d.accept_update("a", 1, 1, bad, 1.0, b"x" * 32, {})


def test_central_dp_noise_and_monotone_epsilon() -> None:
    d, events = driver(rounds=4, min_sites=2, dp=DpConfig(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5))
    previous = None
    for _ in range(4):
        before = flatten(d.final_model(), d.spec)
        submit(d, "a", const(0.01))
        submit(d, "b", const(0.01))
        after = flatten(d.final_model(), d.spec)
        # clipped updates average to exactly 0.01 per coordinate; the aggregator's noise moves it
        assert not np.allclose(after - before, 0.01, atol=1e-3)
        epsilon = events.of("round")[-1]["epsilon"]
        assert epsilon is not None and (previous is None or epsilon > previous)
        previous = epsilon


def test_dp_clips_every_update_inside_the_aggregator() -> None:
    d, events = driver(rounds=1, min_sites=1, dp=DpConfig(clip_norm=0.5, noise_multiplier=1e-6, delta=1e-5))
    submit(d, "a", const(10.0))
    norm = float(np.linalg.norm(flatten(d.final_model(), d.spec)))
    assert norm == pytest.approx(0.5, rel=1e-3)
    assert events.of("round")[0]["participants"]["a"]["norm_before_clip"] > 10


def test_configuration_errors() -> None:
    with pytest.raises(TaskConfigError, match="needs at least 5"):
        driver(rounds=1, min_sites=3, strategy=Krum(f=1))
    with pytest.raises(StrategyError):
        make_strategy("mean-of-medians")
    with pytest.raises(StrategyError):
        make_strategy("trimmed_mean", beta=0.5)


# --- Byzantine robustness with real local training ----------------------------------------------


def _local_train(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, epochs: int = 20, lr: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression, full-batch gradient descent (the site's local step)."""
    w, b = w.copy(), b.copy()
    onehot = np.eye(2, dtype=np.float32)[y]
    for _ in range(epochs):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(x)
        w -= lr * x.T @ grad
        b -= lr * grad.sum(0)
    return w.astype(np.float32), b.astype(np.float32)


def _accuracy(model: dict[str, np.ndarray], splits: list[dict[str, np.ndarray]]) -> float:
    x = np.concatenate([s["x_test"] for s in splits])
    y = np.concatenate([s["y_test"] for s in splits])
    return float(((x @ model["w"] + model["b"]).argmax(1) == y).mean())


def _federate(strategy: str, attack: str, rounds: int = 6) -> float:
    splits, _, _ = split_non_iid(5, seed=3)
    kwargs = {"beta": 0.2, "f": 1}
    d, _ = driver(rounds=rounds, min_sites=5, strategy=make_strategy(strategy, **kwargs))
    for _ in range(rounds):
        model = d.final_model()
        for index, split in enumerate(splits):
            labels = split["y_train"]
            if index == 0 and attack == "scaled":
                labels = 1 - labels  # model replacement: train towards the wrong labels, then boost
            w, b = _local_train(model["w"], model["b"], split["x_train"], labels)
            delta = {"w": w - model["w"], "b": b - model["b"]}
            if index == 0:  # the Byzantine site
                factor = -10.0 if attack == "sign-flip" else 20.0
                delta = {k: v * factor for k, v in delta.items()}
            submit(d, f"site-{index}", delta, float(len(split["y_train"])))
    return _accuracy(d.final_model(), splits[1:])


@pytest.mark.parametrize("attack", ["sign-flip", "scaled"])
def test_robust_strategies_hold_while_fedavg_degrades(attack: str) -> None:
    fedavg = _federate("fedavg", attack)
    robust = {name: _federate(name, attack) for name in ("median", "trimmed_mean", "krum")}
    assert all(acc >= 0.9 for acc in robust.values()), robust
    assert fedavg < 0.85, fedavg
    assert fedavg < min(robust.values()) - 0.05


def test_federated_evaluation_is_per_site_and_weighted() -> None:
    d, events = driver(rounds=1, min_sites=1)
    d.report_metrics("a", 1, {"accuracy": 1.0}, 30)
    d.report_metrics("b", 1, {"accuracy": 0.5}, 10)
    last = events.of("evaluation")[-1]
    assert last["per_site"] == {"a": {"accuracy": 1.0}, "b": {"accuracy": 0.5}}
    assert last["weighted"]["accuracy"] == pytest.approx(0.875)
    with pytest.raises(UpdateRefused, match="current round"):
        d.report_metrics("c", 7, {"accuracy": 1.0}, 1)  # only the current round's model is evaluated
    with pytest.raises(UpdateRefused, match="already reported"):
        d.report_metrics("a", 1, {"accuracy": 0.0}, 30)  # once per site and round


def test_an_update_for_another_attempt_is_refused() -> None:
    d, _ = driver(rounds=2, min_sites=2, round_deadline=0.05)
    submit(d, "a", const(1.0))
    time.sleep(0.1)
    d.tick()  # retried: attempt 2
    with pytest.raises(UpdateRefused, match="attempt 1 of round 1 is not open"):
        d.check_upload("a", 1, 1)
    d.check_upload("a", 1, 2)


def test_a_receipt_that_cannot_be_logged_applies_nothing() -> None:
    class FullDisk(Events):
        def record(self, kind: str, **fields: object) -> None:
            if kind == "update_accepted":
                raise OSError(28, "No space left on device")
            super().record(kind, **fields)

    config = TaskConfig(initial_model=MODEL, rounds=1, min_sites=1)
    d = RoundDriver(config, events=FullDisk())
    with pytest.raises(OSError):
        submit(d, "a", const(1.0))
    assert d._received == {} and d._aggregation.count == 0 and d.round == 1


@pytest.mark.parametrize("strategy", ["fedavg", "median"])
def test_next_models_take_turns_in_two_buffers_and_a_held_model_is_never_written(strategy: str) -> None:
    """A round's next model is made in the buffer of the model before the last (fedavg sums into
    it, median writes the mean of the two into it), never in one that something still holds: a
    download under way, the delivery, a checkpoint being written."""
    large = {"w": np.zeros(200_000, np.float32)}  # past the Accumulator's serial size: its store path
    config = TaskConfig(initial_model=large, rounds=8, min_sites=2, strategy=make_strategy(strategy))
    config.validate()
    d = RoundDriver(config, events=Events())
    seen: list[int] = []  # the models' ids (a held one's is its own)
    held, held_bytes = None, b""
    for round_number in range(1, 8):
        model = d.model_bytes(round_number)
        seen.append(id(model))
        if round_number == 3:
            held, held_bytes = model, bytes(model)  # a reader that never lets go of round 3's model
        del model
        for site in ("a", "b"):
            digest = hashlib.sha256(site.encode()).digest()
            d.accept_update(
                site, round_number, 1, {"w": np.full(200_000, 1.0, np.float32)}, 1.0, digest, {"site": site}
            )
        d.close_if_complete()
    assert d.round == 8
    assert np.array_equal(d.final_model()["w"], np.full(200_000, 7.0, np.float32))  # every value of each round written
    assert held is not None and bytes(held) == held_bytes  # never written after it was made
    assert np.array_equal(np.frombuffer(held, np.float32, offset=len(held) - 800_000), np.full(200_000, 2.0))
    # Two buffers take turns, a third when the held one is out of turn: not one a round.
    assert d._model_buffers.made == 3
    assert id(held) not in seen[3:]
