"""Dataset cards shared with the sites and checked at admission time (docs/intelligence.md):
a site publishes its signed card right after admission (``PublishCard``) and a schema that is
not the task's is refused there, before the site downloads a model or sends an update; admitted
sites fetch the federation's cards (``ListCards``, bounded pages) and verify every signature
themselves (``attestfl site cards``); ``[task.cards] share_with_sites = false`` shows a site only
its own card. Against a real ``attestfl serve``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest

from aggregator.card_calls import MAX_PAGE_CARDS, page
from aggregator.cards import SignedCard
from attestation.platforms.snp import NAME as SNP
from auditor.verify import verify_log
from fedsite.cards import fetch_cards, make_card, publish_after_join, verify_listing
from fedsite.client import AdmissionRefused
from protocol.cards import MAX_CARD_BYTES
from tests.federation import MODEL, Deployment

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("age", "bmi")
SCHEMA = '[task.cards]\nschema = [["age", "float"], ["bmi", "float"]]\nrequired = true\n'


def _card(site: str, names: tuple[str, ...] = NAMES, seed: int = 0):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    return make_card(site, rng.normal(size=(50, len(names))), (rng.random(50) < 0.4).astype(np.int64), names)


class _Trainer:
    def __init__(self, card) -> None:  # noqa: ANN001
        self.card = lambda: card


def _deployment(tmp_path: Path, share: bool) -> Deployment:
    return Deployment(
        tmp_path,
        tmp_path / "vendor",
        sites=dict.fromkeys(("site-a", "site-b", "site-c"), ""),
        # required = true without evaluate: the cards come at admission (PublishCard), not only with metrics
        task=f'rounds = 2\nmin_sites = 2\nround_deadline = "120s"\nevaluate = {str(share).lower()}\n{SCHEMA}'
        + ("" if share else "share_with_sites = false\n"),
    )


def test_cards_are_published_at_admission_shared_and_a_wrong_schema_is_refused_before_any_update(
    tmp_path: Path,
) -> None:
    deployment = _deployment(tmp_path, share=True)
    deployment.directory.mkdir(parents=True, exist_ok=True)
    sealed = deployment.sealed_identity("site-a")  # site-a also runs `attestfl site cards` from a site.toml
    aggregator = deployment.start()
    said: list[str] = []
    try:
        with (
            deployment.client(aggregator.target, site_id="site-a") as a,
            deployment.client(aggregator.target, site_id="site-b") as b,
            deployment.client(aggregator.target, site_id="site-c") as c,
        ):
            for client in (a, b, c):
                client.join()
            publish_after_join(a, _Trainer(_card("anything")), said.append)  # the SDK names the card's site
            assert b.publish_card(_card("site-b", seed=1)) is True
            assert b.publish_card(_card("site-b", seed=1)) is False  # the same card: not logged again
            with pytest.raises(grpc.RpcError) as other:  # a different card in the same round: bounded
                b.publish_card(_card("site-b", seed=2))
            assert other.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(AdmissionRefused, match="lacks bmi"):  # the SDK stops the site
                publish_after_join(c, _Trainer(_card("site-c", names=("age",))), said.append)
            with pytest.raises(grpc.RpcError) as again:  # refused without logging again
                c.publish_card(_card("site-c"))
            assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION

            cards, problems, shared = fetch_cards(c)  # every admitted site sees the cards, verified here
            assert shared and problems == [] and [v.card.site for v in cards] == ["site-a", "site-b"]
            assert cards[0].card.schema == (("age", "float"), ("bmi", "float")) and cards[0].card.examples == 50
            assert cards[0].identity == deployment.identity("site-a").public.hex()
            listing = c.list_cards(0)
            listing.cards[1].card = listing.cards[1].card.replace('"examples":50.0', '"examples":500.0')
            verified, problems = verify_listing(listing.cards)  # a card altered on the way is caught
            assert [v.card.site for v in verified] == ["site-a"] and "site-b: the signature" in problems[0]

        site_toml = tmp_path / "site-a.toml"
        roots = ", ".join(f'"{fp}"' for fp in deployment.roots.values())
        (tmp_path / "policy.toml").write_text(
            f'trusted_simulated_roots = [{roots}]\nplatforms = ["{SNP}"]\n'
            f'[{SNP}]\nmeasurement = ["{deployment.measurement().hex()}"]\n'
        )
        site_toml.write_text(
            textwrap.dedent(f"""\
            [site]
            id = "site-a"
            aggregator = "{aggregator.target}"
            tee = "simulated-snp"
            simulated_dir = "{deployment.sim_dir}"
            policy = "policy.toml"
            identity = "{sealed}"
            state_dir = "site-a-state"
            """)
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for extra in ([], ["--json"]):
            shown = subprocess.run(
                [sys.executable, "-m", "attestfl.cli", "site", "cards", "--config", str(site_toml), *extra],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                env=env,
                timeout=120,
            )
            assert shown.returncode == 0, shown.stderr
            if extra:
                listed = json.loads(shown.stdout)
                assert [card["site"] for card in listed["cards"]] == ["site-a", "site-b"]
                assert listed["cards"][1]["labels"] and listed["cards"][1]["missing"] == {"age": 0.0, "bmi": 0.0}
                assert all(card["signature"] == "verified" for card in listed["cards"])
            else:
                assert "2 dataset card(s)" in shown.stdout and "examples: 50" in shown.stdout
        events = aggregator.events()
    finally:
        aggregator.stop()
    assert said == ["dataset card published"]
    refused = [e for e in events if e["message"] == "dataset_card_refused"]
    assert [e["site"] for e in refused] == ["site-c"] and refused[0]["round"] == 1
    assert [e["site"] for e in events if e["message"] == "dataset_card"] == ["site-a", "site-b", "site-c"]
    assert not any(e["message"] in ("update_accepted", "model_delivered") for e in events if e.get("site") == "site-c")
    result = verify_log(deployment.directory / "audit-log", None)
    assert not [p for p in result.problems if p.check.startswith("dataset_card")]
    config = next(e for e in result.entries if e.kind == "config")
    assert config.fields["task"]["cards"] == {"share_with_sites": True}


def test_share_with_sites_false_shows_a_site_only_its_own_card(tmp_path: Path) -> None:
    deployment = _deployment(tmp_path, share=False)
    aggregator = deployment.start()
    try:
        with (
            deployment.client(aggregator.target, site_id="site-a") as a,
            deployment.client(aggregator.target, site_id="site-b") as b,
        ):
            a.join()
            b.join()
            update = {name: np.ones_like(array) for name, array in MODEL.items()}
            with pytest.raises(grpc.RpcError, match="not published its dataset card"):  # required = true
                a.upload_update(1, update, 10.0)
            a.publish_card(_card("site-a"))
            a.upload_update(1, update, 10.0)  # the card came at admission: no metrics report needed
            assert fetch_cards(b) == ([], [], False)
            b.publish_card(_card("site-b"))
            cards, problems, shared = fetch_cards(b)
            assert not shared and problems == [] and [v.card.site for v in cards] == ["site-b"]
    finally:
        aggregator.stop()
    config = next(e for e in verify_log(deployment.directory / "audit-log", None).entries if e.kind == "config")
    assert config.fields["task"]["cards"] == {"share_with_sites": False}


def test_pages_are_bounded_in_count_and_bytes() -> None:
    small = [SignedCard(f"s{i:03}", "x" * 100, b"", b"", b"", 1) for i in range(150)]
    first = page(small, 0, shared=True)
    assert len(first.cards) == MAX_PAGE_CARDS and first.next_offset == MAX_PAGE_CARDS and first.total == 150
    assert page(small, 128, shared=True).next_offset == 150 and len(page(small, 999, shared=True).cards) == 0
    big = [SignedCard(f"s{i:03}", "x" * MAX_CARD_BYTES, b"", b"", b"", 1) for i in range(64)]
    assert sum(len(c.card) for c in page(big, 0, shared=True).cards) <= 1 << 20
    assert len(page(big, 0, shared=True).cards) == 32
