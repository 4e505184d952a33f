"""An unchanged Flower NumPyClient (the shape of Flower's PyTorch quickstart, with the real
``flwr`` package) trains in an attested attestfl federation through fedsite.flower.FlowerTrainer:
two sites, each in its own thread with its own simulated TEE and identity, against a real
`attestfl serve`."""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

with warnings.catch_warnings():  # flwr's CLI dependencies (typer/click) warn on import; not ours to fix
    warnings.simplefilter("ignore", DeprecationWarning)
    from flwr.client import NumPyClient

from attestfl.demo import make_model, split_non_iid
from federation import Deployment, run_aggregator
from fedsite.flower import FlowerTrainer, FlowerTrainerError
from fedsite.sdk import run_site


def get_parameters(net: nn.Module) -> list[np.ndarray]:
    return [val.cpu().numpy() for _, val in net.state_dict().items()]


def set_parameters(net: nn.Module, parameters: list[np.ndarray]) -> None:
    state_dict = OrderedDict({k: torch.tensor(v) for k, v in zip(net.state_dict().keys(), parameters, strict=True)})
    net.load_state_dict(state_dict, strict=True)


class FlowerClient(NumPyClient):
    """Flower's quickstart client, as a Flower user writes it."""

    def __init__(self, net: nn.Module, train: dict, test: dict) -> None:
        self.net, self.train_data, self.test_data = net, train, test

    def get_parameters(self, config):  # noqa: ANN001, ANN201
        return get_parameters(self.net)

    def fit(self, parameters, config):  # noqa: ANN001, ANN201
        set_parameters(self.net, parameters)
        x, y = torch.from_numpy(self.train_data["x"]), torch.from_numpy(self.train_data["y"])
        optimiser = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)
        for _ in range(3):
            for start in range(0, len(x), 16):
                optimiser.zero_grad()
                nn.CrossEntropyLoss()(self.net(x[start : start + 16]), y[start : start + 16]).backward()
                optimiser.step()
        return get_parameters(self.net), len(x), {}

    def evaluate(self, parameters, config):  # noqa: ANN001, ANN201
        set_parameters(self.net, parameters)
        x, y = torch.from_numpy(self.test_data["x"]), torch.from_numpy(self.test_data["y"])
        with torch.no_grad():
            logits = self.net(x)
        loss = float(nn.CrossEntropyLoss()(logits, y))
        return loss, len(x), {"accuracy": float((logits.argmax(1) == y).float().mean())}


def test_an_unchanged_flower_client_trains_in_an_attested_federation(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    splits, _mean, _std = split_non_iid(2)
    initial = {k: v.detach().numpy().astype(np.float32) for k, v in make_model().state_dict().items()}
    deployment = Deployment(
        tmp_path,
        tmp_path / "vendor",
        model=initial,
        sites={"clinic-a": "", "clinic-b": ""},
        task='rounds = 3\nmin_sites = 2\nround_deadline = "120s"',
    )
    results: dict = {}
    for aggregator in run_aggregator(deployment):

        def site(target: str, site_id: str, split: dict) -> None:
            client = FlowerClient(
                make_model(seed=1),
                {"x": split["x_train"], "y": split["y_train"]},
                {"x": split["x_test"], "y": split["y_test"]},
            )
            try:
                with deployment.client(target, site_id=site_id) as connection:
                    results[site_id] = run_site(connection, FlowerTrainer(client), progress=None)
            except Exception as exc:  # noqa: BLE001 - reported below
                results[site_id] = exc

        threads = [
            threading.Thread(target=site, args=(aggregator.target, s, split))
            for s, split in zip(("clinic-a", "clinic-b"), splits, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        events = aggregator.events()
    for site_id in ("clinic-a", "clinic-b"):
        summary = results[site_id]
        assert not isinstance(summary, Exception), summary
        assert summary.rounds_trained == [1, 2, 3]
        assert summary.metrics[4]["accuracy"] >= 0.85  # the final model, evaluated by the Flower client
    assert [e["round"] for e in events if e["message"] == "round"] == [1, 2, 3]


def test_a_flower_client_for_another_model_is_refused_clearly() -> None:
    trainer = FlowerTrainer(
        FlowerClient(
            nn.Linear(3, 2),
            {"x": np.zeros((2, 3), np.float32), "y": np.zeros(2, np.int64)},
            {"x": np.zeros((2, 3), np.float32), "y": np.zeros(2, np.int64)},
        )
    )
    with pytest.raises(
        FlowerTrainerError, match=r"get_parameters returned shape \(2, 3\) for 0.weight, the model has \(16, 30\)"
    ):
        trainer.set({"0.weight": np.zeros((16, 30), np.float32), "0.bias": np.zeros(16, np.float32)})
