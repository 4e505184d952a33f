"""Adapters (issue 19 item 4): a task federates only a declared subset of tensors (LoRA adapters
built with ``peft`` on a small torch model here), on a frozen base pinned by digest. Through a
real ``attestfl serve``: only the adapters travel, the aggregator aggregates only them, and a site
whose base differs refuses to train, in one line."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import peft
import pytest
import torch

from federation import Deployment, run_aggregator
from protocol.adapters import AdapterError, AdapterSpec, BaseModelMismatch, check_base
from protocol.tensors import ModelSpec, encode_tensors, load_model

PATTERNS = ["*.lora_A.*", "*.lora_B.*"]


class Small(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 1)

    def forward(self, x: Any) -> Any:
        return self.fc2(torch.relu(self.fc1(x)))


def peft_model(base_file: Path) -> Any:
    """The site's model: the frozen base from its file, LoRA adapters (rank 2) on both layers."""
    base = Small()
    base.load_state_dict({k: torch.from_numpy(v) for k, v in load_model(base_file).items()})
    return peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"]))


def state(model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().astype(np.float32, copy=True) for k, v in model.state_dict().items()}


# --- configuration and the pin ------------------------------------------------------------


def test_the_table_is_read_and_checked() -> None:
    digest = hashlib.sha256(b"base").hexdigest()
    spec = AdapterSpec.from_table({"tensors": PATTERNS, "base_sha256": digest})
    assert spec.base_sha256.hex() == digest and spec.tensors == tuple(PATTERNS)
    model = {"a.fc1.base_layer.weight": 1, "a.fc1.lora_A.default.weight": 2, "a.fc1.lora_B.default.weight": 3}
    assert list(spec.select(model)) == ["a.fc1.lora_A.default.weight", "a.fc1.lora_B.default.weight"]
    assert list(AdapterSpec(("a.fc1.base_layer.weight",), spec.base_sha256).select(model)) == [
        "a.fc1.base_layer.weight"
    ]  # exact names too
    with pytest.raises(AdapterError, match=r"'\*\.lora_C\.\*' matches no tensor of the initial model"):
        AdapterSpec(("*.lora_A.*", "*.lora_C.*"), spec.base_sha256).select(model)
    for table, reason in [
        ({"tensors": PATTERNS}, "base_sha256: required"),
        ({"tensors": PATTERNS, "base_sha256": "abc"}, "base_sha256: required"),
        ({"tensors": "*.lora*", "base_sha256": digest}, "tensors: required: a list"),
        ({"tensors": [], "base_sha256": digest}, "tensors: 1 to 256"),
        ({"tensors": PATTERNS, "base_sha256": digest, "base": 1}, "unknown key"),
    ]:
        with pytest.raises(AdapterError, match=reason):
            AdapterSpec.from_table(table)


def test_a_different_or_missing_base_is_refused_in_one_line() -> None:
    pinned, other = hashlib.sha256(b"base").digest(), hashlib.sha256(b"other").digest()
    check_base(pinned, pinned)
    for digest, reason in [(other, f"has SHA-256 {other.hex()}, the task pins {pinned.hex()}"), (None, "declares no")]:
        with pytest.raises(BaseModelMismatch) as caught:
            check_base(pinned, digest)
        assert reason in str(caught.value) and "\n" not in str(caught.value)
        assert caught.value.exit_code == 1


def test_a_pattern_matching_nothing_is_a_config_error(tmp_path: Path) -> None:
    from test_config_validation import refused, write

    digest = hashlib.sha256(b"base").hexdigest()
    assert refused(write(tmp_path, extra=f'[task.adapters]\ntensors = ["lora_*"]\nbase_sha256 = "{digest}"\n')) == (
        "[task.adapters] tensors: 'lora_*' matches no tensor of the initial model"
    )
    from aggregator.config import AggregatorConfig

    adapters = f'[task.adapters]\ntensors = ["w"]\nbase_sha256 = "{digest}"\n'
    config = AggregatorConfig.load(write(tmp_path, extra=adapters))
    assert config.task.adapters is not None and list(config.task.initial_model) == ["w"]


# --- a federation ---------------------------------------------------------------------------


def test_only_the_adapters_travel_and_are_aggregated(tmp_path: Path) -> None:
    from fedsite.adapters import AdapterTrainer, BaseModelRefused
    from fedsite.sdk import run_site

    torch.manual_seed(0)
    base_file = tmp_path / "base.safetensors"
    base_file.write_bytes(encode_tensors(state(Small())))
    full = state(peft_model(base_file))  # base + adapters: the operator's initial_model
    adapters = {k: v for k, v in full.items() if "lora_" in k}
    assert 0 < len(adapters) < len(full)
    wrong_base = tmp_path / "other-base.safetensors"
    tampered = load_model(base_file)
    tampered["fc1.weight"][0, 0] += 1.0
    wrong_base.write_bytes(encode_tensors(tampered))

    deployment = Deployment(
        tmp_path / "deployment",
        tmp_path / "sim",
        model=full,
        sites={"site-a": "", "site-b": "", "site-c": ""},
        task=(
            'rounds = 2\nmin_sites = 2\nround_deadline = "6s"\nevaluate = false\n'
            f'[task.adapters]\ntensors = ["*.lora_A.*", "*.lora_B.*"]\n'
            f'base_sha256 = "{hashlib.sha256(base_file.read_bytes()).hexdigest()}"'
        ),
    )
    deployment.directory.mkdir()
    locals_: dict[str, list[dict[str, np.ndarray]]] = {"site-a": [], "site-b": []}

    def trainer(site: str, seed: int) -> AdapterTrainer:
        model = peft_model(base_file)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(32, 8, generator=generator)
        y = x.sum(dim=1, keepdim=True) * (0.1 * seed)

        def train(m: Any) -> int:
            optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
            for _ in range(5):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(m(x), y).backward()
                optimizer.step()
            locals_[site].append({k: v for k, v in state(m).items() if "lora_" in k})
            return 32

        def evaluate(m: Any) -> tuple[dict[str, float], int]:
            with torch.no_grad():
                return {"loss": float(torch.nn.functional.mse_loss(m(x), y))}, 32

        return AdapterTrainer(model, train=train, evaluate=evaluate, base_model=base_file)

    for aggregator in run_aggregator(deployment):
        # A site on another base joins, learns the pin and refuses before downloading anything.
        with deployment.client(aggregator.target, site_id="site-c") as client:
            wrong = AdapterTrainer(peft_model(wrong_base), train=lambda m: 1, base_model=wrong_base)
            with pytest.raises(BaseModelRefused) as caught:
                run_site(client, wrong, progress=None)
            message = str(caught.value)
            assert "\n" not in message and message.endswith("refusing to train") and caught.value.exit_code == 1
            task = client.task()
            assert task.adapter_base_sha256 == hashlib.sha256(base_file.read_bytes()).digest()
            assert list(task.adapter_tensors) == PATTERNS
            spec = ModelSpec.from_json(task.model_spec)
            assert [t.name for t in spec.tensors] == list(adapters)  # sites see only the adapters

        trainers = {"site-a": trainer("site-a", 1), "site-b": trainer("site-b", 2)}
        base_before = {s: {k: v for k, v in state(t.model).items() if "lora_" not in k} for s, t in trainers.items()}
        summaries: dict[str, Any] = {}
        errors: list[BaseException] = []

        def run(site: str, aggregator: Any = aggregator, summaries: Any = summaries, errors: Any = errors) -> None:
            try:
                with deployment.client(aggregator.target, site_id=site) as client:
                    summaries[site] = run_site(client, trainers[site], progress=None)  # noqa: B023 - same dict
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in trainers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert all(summaries[s].rounds_trained == [1, 2] for s in trainers)
        events = aggregator.events()

    rounds = [e for e in events if e["message"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(sorted(r["participants"]) == ["site-a", "site-b"] for r in rounds)
    assert not any(e.get("site") == "site-c" for e in events if e["message"] == "update_accepted")
    # Each round's model is the mean of the two sites' local adapters (same example counts):
    # the final model both sites hold now (set to evaluate it) is the mean of their round-2 adapters.
    expected = {k: (locals_["site-a"][1][k] + locals_["site-b"][1][k]) / 2 for k in adapters}
    for site, t in trainers.items():
        now = state(t.model)
        for name, value in expected.items():
            np.testing.assert_allclose(now[name], value, rtol=1e-5, atol=1e-6)
        for name, value in base_before[site].items():  # the frozen base never moved
            np.testing.assert_array_equal(now[name], value)
    # Only the adapters travelled: the update bytes the aggregator received are the subset's.
    accepted = [e for e in events if e["message"] == "update_accepted"]
    assert len(accepted) == 4
    subset_bytes = sum(v.nbytes for v in adapters.values())
    assert all(subset_bytes <= e["bytes"] < subset_bytes + 4096 for e in accepted)
    assert subset_bytes < sum(v.nbytes for v in full.values()) / 2
