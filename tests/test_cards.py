"""Dataset cards: made at the site (optionally noised), signed by its identity key for its
session, verified and checked against the task's schema by the aggregator (a mismatch refuses
the site's updates), compared across time (label shift), re-verified offline by ``attestfl
audit verify`` and listed by ``attestfl federation cards``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from aggregator.audit.synthetic import SyntheticFederation
from aggregator.cards import CardPolicy, CardRegistry
from aggregator.service import UpdateRefused
from attestfl.cli import main
from auditor.verify import verify_log
from enclave.identity import SiteIdentity
from fedsite.cards import make_card
from protocol.cards import CardError, DatasetCard, card_message, parse_card

NAMES = ("age", "bmi", "smoker")


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def record(self, kind: str, **fields: object) -> None:
        self.seen.append((kind, fields))


def _data(seed: int = 0, positives: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3))
    x[:20, 1] = np.nan  # 10% missing bmi
    return x, (rng.random(200) < positives).astype(np.int64)


def test_a_card_describes_the_data_and_round_trips() -> None:
    x, y = _data()
    card = make_card("a", x, y, NAMES)
    assert card.examples == 200 and card.schema == (("age", "float"), ("bmi", "float"), ("smoker", "float"))
    assert card.missing["bmi"] == 0.1 and card.missing["age"] == 0.0
    assert sum(card.labels.values()) == 200 and parse_card(card.to_json()) == card
    noised = make_card("a", x, y, NAMES, epsilon=1.0, rng=np.random.default_rng(1))
    assert noised.epsilon == 1.0 and noised.examples != 200 and abs(noised.examples - 200) < 20
    for bad, reason in (
        ("[]", "not a map"),
        (card.to_json().replace('"float"', '"tensor"', 1), "not one of"),
        ("x" * 40_000, "over"),
    ):
        with pytest.raises(CardError, match=reason):
            parse_card(bad)


def _signed(identity: SiteIdentity, session: bytes, card: DatasetCard) -> tuple[str, bytes]:
    text = card.to_json()
    return text, identity.sign(card_message(session, text.encode()))


def test_the_aggregator_checks_signature_schema_and_label_shift() -> None:
    identity, session = SiteIdentity.generate("a"), os.urandom(16)
    schema = tuple((n, "float") for n in NAMES)
    registry, events = CardRegistry(CardPolicy(schema=schema, required=True, label_shift=0.2)), Events()
    with pytest.raises(UpdateRefused, match="not published its dataset card"):
        registry.check_upload("a")
    x, y = _data()
    text, signature = _signed(identity, session, make_card("a", x, y, NAMES))
    kwargs: dict[str, Any] = {"site": "a", "round_number": 1, "session": session, "identity": identity.public}
    with pytest.raises(UpdateRefused, match="signature") as refused:
        registry.accept(events, **kwargs, text=text, signature=bytes(64))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert registry.accept(events, **kwargs, text=text, signature=signature) == []
    registry.check_upload("a")
    assert [k for k, _ in events.seen] == ["dataset_card"] and events.seen[0][1]["schema_ok"]
    assert registry.accept(events, **kwargs, text=text, signature=signature) == [] and len(events.seen) == 1
    x2, y2 = _data(2, positives=0.8)  # the site's population changed
    text2, signature2 = _signed(identity, session, make_card("a", x2, y2, NAMES))
    (alert,) = registry.accept(events, **{**kwargs, "round_number": 3}, text=text2, signature=signature2)
    assert alert["rule"] == "label_shift" and alert["round"] == 3 and alert["value"] > 0.4

    other = SiteIdentity.generate("b")
    text3, signature3 = _signed(other, session, make_card("b", x[:, :2], y, NAMES[:2]))
    with pytest.raises(UpdateRefused, match="lacks smoker"):
        registry.accept(events, **{**kwargs, "site": "b", "identity": other.public}, text=text3, signature=signature3)
    assert events.seen[-1][0] == "dataset_card_refused"
    with pytest.raises(UpdateRefused, match="refused"):
        registry.check_upload("b")


def test_cards_verify_offline_and_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fed = SyntheticFederation(tmp_path / "log", tmp_path / "sim", sites=["a", "b"])
    fed.admit("a")
    fed.admit("b")
    assert fed.log is not None
    x, y = _data()
    for site in ("a", "b"):
        session = os.urandom(16)
        fed.log.record("session", site=site, session=session.hex(), identity=fed.identities[site].public.hex())
        text, signature = _signed(fed.identities[site], session, make_card(site, x, y, NAMES))
        if site == "b":
            text = text.replace('"examples":200.0', '"examples":2000.0')  # altered after signing
        fed.log.record(
            "dataset_card",
            round=1,
            site=site,
            session=session.hex(),
            card=text,
            signature=signature.hex(),
            schema_ok=True,
        )
    fed.close()
    result = verify_log(tmp_path / "log", fed.auditor_policy())
    assert [(p.check, p.index) for p in result.problems] == [("dataset_card.signature", len(result.entries) - 1)]
    policy = tmp_path / "policy.toml"
    policy.write_bytes(fed.policy_text)
    assert main(["federation", "cards", str(tmp_path / "log"), "--policy", str(policy), "--json"]) == 1
    listed = json.loads(capsys.readouterr().out)
    assert [c["site"] for c in listed["cards"]] == ["a", "b"] and listed["cards"][0]["examples"] == 200
    assert "dataset_card.signature" in listed["problem"]


def test_the_driver_takes_one_card_per_site_and_round_with_its_metrics() -> None:
    from aggregator.rounds import RoundDriver, TaskConfig

    events = Events()
    driver = RoundDriver(TaskConfig(initial_model={"w": np.zeros(4, np.float32)}, rounds=2), events=events)
    identity, session = SiteIdentity.generate("a"), os.urandom(16)
    x, y = _data()
    text, signature = _signed(identity, session, make_card("a", x, y, NAMES))
    driver.report_card("a", 1, session, identity.public, text, signature)
    driver.report_metrics("a", 1, {"accuracy": 0.5}, 10)
    for round_number in (1, 2):  # a second card in round 1, or one for a round that is not open
        with pytest.raises(UpdateRefused, match="one metrics report of the current round"):
            driver.report_card("a", round_number, session, identity.public, text, signature)
    assert [k for k, _ in events.seen].count("dataset_card") == 1
