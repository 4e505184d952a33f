"""``attestfl demo --scenario drift``: drift surveillance, quarantine and contributor value.

Two sites misbehave in known ways, so the aggregator's alerts can be checked against the truth:

* ``SHIFTED`` (the second site): from round ``SHIFT_ROUND`` on, its data come from a new
  scanner (every feature offset by one standard deviation), in training and in its held-out data alike:
  its evaluation of the round's model drops, and the ``metric_drop`` rule fires for it at that
  round (an alert, not a quarantine: its updates are honest).
* ``POISONER`` (the last site): sends its honest update scaled by ``SCALE`` every round (a
  boosting attack): the ``norm_ratio`` rule fires for it every round and the quarantine
  excludes its update from the aggregate (logged before it is applied).

Six sites by default (the median update norm the rules compare with needs a few honest sites).
The task sets ``[task.drift]`` and ``[task.contribution]`` (released at the end); the summary
adds the alerts, quarantines and contributor ranking (the poisoner last).
``ATTESTFL_DRIFT_CLEAN=1`` runs the same federation with the poisoner honest (the reference
run the quarantined run is compared with).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from attestfl.scenarios import Scenario

BASE_TRAINER = "attestfl.demo:breast_cancer_trainer"
SHIFT_ROUND = 3
SCALE = 20.0
SHIFT_OFFSET = 1.0
SHIFT_GAIN = 1.0

TASK = """\
[task.drift]
norm_ratio = 10.0
metric_drop = 0.2
quarantine = true
[task.contribution]
release = "final"
permutations = 64
"""


def shifted(x: Any) -> Any:
    """The new scanner: every (standardised) feature offset by one standard deviation."""
    return x * SHIFT_GAIN + SHIFT_OFFSET


def roles(site_ids: list[str]) -> tuple[str, str]:
    """(the shifted site, the poisoner) of a federation of at least three sites."""
    if len(site_ids) < 3:
        raise ValueError("the drift scenario needs at least 3 sites")
    return site_ids[1], site_ids[-1]


def site_data(site_id: str, site_ids: list[str]) -> str:
    """The [data] lines of a site in this scenario."""
    shift, poisoner = roles(site_ids)
    lines = []
    if site_id == shift:
        lines.append(f"shift_round = {SHIFT_ROUND}")
    if site_id == poisoner and not os.environ.get("ATTESTFL_DRIFT_CLEAN"):
        lines.append(f"scale = {SCALE}")
    return "\n".join(lines)


def drift_trainer(data: dict[str, Any], base_dir: Path) -> Any:
    """The demo's trainer (local SGD on breast-cancer data, the fixed metric set) with the
    scenario's behaviour: a data shift from round ``shift_round`` (counted by the site's
    evaluations, one per round) and updates scaled by ``scale``."""
    import torch

    # The trainer this one wraps, named like a site's [data] trainer (the demo's by default).
    module, _, name = str(data.get("base_trainer", BASE_TRAINER)).partition(":")
    breast_cancer_trainer = getattr(importlib.import_module(module), name)
    trainer = breast_cancer_trainer(data, base_dir)
    shift_round = int(data.get("shift_round", 0))
    scale = float(data.get("scale", 1.0))
    train, evaluate = trainer.train, trainer.evaluate
    assert evaluate is not None
    arrays = np.load(base_dir / str(data["file"]))
    state = {"evaluations": 0, "shifted": False}

    def shift_now() -> None:
        if shift_round and state["evaluations"] >= shift_round and not state["shifted"]:
            state["shifted"] = True
            shifted_file = base_dir / f"{Path(str(data['file'])).stem}-shifted.npz"
            np.savez(
                shifted_file,
                x_train=shifted(arrays["x_train"]),
                y_train=arrays["y_train"],
                x_test=shifted(arrays["x_test"]),
                y_test=arrays["y_test"],
            )
            again = breast_cancer_trainer({**data, "file": shifted_file.name}, base_dir)
            trainer_parts["train"], trainer_parts["evaluate"] = again.train, again.evaluate
            trainer_parts["recalibrate"] = again.recalibrate

    trainer_parts: dict[str, Any] = {"train": train, "evaluate": evaluate, "recalibrate": trainer.recalibrate}

    def scenario_evaluate(model: Any) -> tuple[dict[str, float], int]:
        state["evaluations"] += 1
        shift_now()
        return trainer_parts["evaluate"](model)

    def scenario_train(model: Any) -> int:
        before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        examples = int(trainer_parts["train"](model))
        if scale != 1.0:
            with torch.no_grad():
                model.load_state_dict({n: before[n] + scale * (t - before[n]) for n, t in model.state_dict().items()})
        return examples

    def scenario_recalibrate(model: Any) -> dict[str, float]:
        return trainer_parts["recalibrate"](model)

    trainer.train, trainer.evaluate, trainer.recalibrate = scenario_train, scenario_evaluate, scenario_recalibrate
    return trainer


SCENARIO = Scenario(
    name="drift",
    description="one site's data shift at round 3, another site's scaled updates: alerts, quarantine, "
    "contributor value",
    trainer="attestfl.scenarios.drift:drift_trainer",
    task=TASK,
    site_data=site_data,
    sites=6,
)
