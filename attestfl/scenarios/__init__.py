"""``attestfl demo --scenario NAME``: variants of the demo, each in its own module here that
defines ``SCENARIO`` (a :class:`Scenario`), registered with one line in :data:`SCENARIOS`."""

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


def load_scenario(name: str) -> Scenario:
    scenario = importlib.import_module(SCENARIOS[name]).SCENARIO
    assert isinstance(scenario, Scenario)
    return scenario


__all__ = ["SCENARIOS", "Scenario", "load_scenario"]
