"""``attestfl demo --scenario NAME``: variants of the demo, each in its own module here.

A variant of the training federation defines ``SCENARIO`` (a :class:`Scenario`) and is registered
with one line in :data:`SCENARIOS`; a demonstration with a flow of its own (the vendor comparison)
defines a ``run(args)`` function and is registered with one line in :data:`RUNNERS`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    trainer: str  # "module:function", the sites' [data] trainer
    task: str = ""  # TOML appended to the [task] table (its sub-tables)
    site_data: Callable[[str, list[str]], str] | None = None  # (site, honest site ids) -> extra [data] lines
    sites: int = 4  # honest sites when --sites is not given


#: name -> the module defining SCENARIO.
SCENARIOS: dict[str, str] = {
    "drift": "attestfl.scenarios.drift",
}


#: name -> "module:function" of a demonstration with its own flow: ``function(args) -> exit code``.
RUNNERS: dict[str, str] = {
    "vendors": "attestfl.scenarios.vendors:run",
}


def load_scenario(name: str) -> Scenario:
    scenario = importlib.import_module(SCENARIOS[name]).SCENARIO
    assert isinstance(scenario, Scenario)
    return scenario


__all__ = ["RUNNERS", "SCENARIOS", "Scenario", "load_scenario"]
