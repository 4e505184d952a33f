"""Flower clients in an attested federation: an unchanged Flower ``NumPyClient`` takes part
through :class:`FlowerTrainer`, the site trainer that :func:`fedsite.sdk.run_site` drives.

    from flwr.client import NumPyClient          # your existing Flower client, unchanged
    class FlowerClient(NumPyClient):
        def get_parameters(self, config): ...
        def fit(self, parameters, config): ...   # -> (parameters, num_examples, metrics)
        def evaluate(self, parameters, config): ...  # -> (loss, num_examples, metrics)

    # trainer.py next to site.toml ([data] trainer = "trainer.py:make"):
    def make(data, base_dir):
        return FlowerTrainer(FlowerClient())

Flower's parameters are a list of arrays in the model's order; attestfl's updates are named
tensors in the task's model spec order (the order of the initial model's ``state_dict``, which
is what ``get_parameters`` returns). The adapter maps one onto the other by position and
checks the count and shapes, so a client built for another model fails with a clear error
instead of training on a misaligned model. What leaves the site is still only the sealed delta
to the attested aggregator; Flower itself (its server, its transport) is not used. This module
needs no ``flwr`` import: any object with Flower's three methods works.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from attestation.errors import AttestflError


class FlowerTrainerError(AttestflError, ValueError):
    """The Flower client returned parameters that do not fit the federation's model."""


class FlowerTrainer:
    """A site trainer around a Flower ``NumPyClient`` (``fit``/``evaluate`` with lists of arrays).

    ``config`` is the ``config`` dict Flower passes to ``fit`` and ``evaluate`` (a copy each call)."""

    def __init__(self, client: Any, config: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.config = dict(config or {})
        self.model = client  # what run_site hands back to train/evaluate (unused here)
        self._names: list[str] = []
        self._global: list[np.ndarray] = []
        self._local: list[np.ndarray] | None = None
        self._matched = False

    def set(self, tensors: Mapping[str, np.ndarray]) -> None:
        """The round's global model (named tensors in the model spec's order). The first time,
        the client's own parameters must match it in count and shapes."""
        self._names = list(tensors)
        self._global = [np.asarray(tensors[name], dtype=np.float32) for name in self._names]
        self._local = None
        if not self._matched:
            self._checked(self.client.get_parameters(dict(self.config)), "get_parameters")
            self._matched = True

    def train(self, _model: Any = None) -> int:
        """``fit`` on the global model; the example count is the update's weight."""
        parameters, examples, _metrics = self.client.fit([p.copy() for p in self._global], dict(self.config))
        self._local = self._checked(parameters, "fit")
        return int(examples)

    def evaluate(self, _model: Any = None) -> tuple[dict[str, float], int]:
        """``evaluate`` on the global model: its loss and numeric metrics, and the example count."""
        loss, examples, metrics = self.client.evaluate([p.copy() for p in self._global], dict(self.config))
        numeric = {
            str(k): float(v)
            for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return {"loss": float(loss), **numeric}, int(examples)

    def get(self) -> dict[str, np.ndarray]:
        """The local model after ``train`` (the global one before), as named tensors."""
        return dict(zip(self._names, self._local if self._local is not None else self._global, strict=True))

    def _checked(self, parameters: Any, method: str) -> list[np.ndarray]:
        arrays = [np.asarray(p, dtype=np.float32) for p in parameters]
        if len(arrays) != len(self._global):
            raise FlowerTrainerError(
                f"the Flower client's {method} returned {len(arrays)} arrays; the federation's model has "
                f"{len(self._global)} ({', '.join(self._names)})"
            )
        for name, got, want in zip(self._names, arrays, self._global, strict=True):
            if got.shape != want.shape:
                raise FlowerTrainerError(
                    f"the Flower client's {method} returned shape {got.shape} for {name}, the model has {want.shape}"
                )
        return arrays


__all__ = ["FlowerTrainer", "FlowerTrainerError"]
