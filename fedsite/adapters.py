"""The site's side of adapter tasks (``[task.adapters]``, :mod:`protocol.adapters`).

An :class:`AdapterTrainer` is a :class:`fedsite.sdk.TorchTrainer` over a model whose frozen base
came from a file (``base_model``): it loads only the federated tensors the aggregator sends (the
task's model spec is the subset) and gives back only those, and it states the base file's SHA-256.
Before it trains, the site checks that digest against the task's pin (:func:`check_trainer_base`)
and refuses in one line when they differ::

    model = get_peft_model(base, LoraConfig(r=4, target_modules=["fc1"]))   # peft, or any LoRA module
    trainer = AdapterTrainer(model, train=my_train, base_model=Path("base.safetensors"))
    run_site(client, trainer)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsite.client import SiteError
from protocol.adapters import BaseModelMismatch, check_base, file_sha256


class BaseModelRefused(SiteError, BaseModelMismatch):
    """This site's frozen base model is not the task's: nothing was trained or sent."""

    exit_code = BaseModelMismatch.exit_code


@dataclass
class AdapterTrainer:
    """A torch model trained by adapters, with :class:`fedsite.sdk.TorchTrainer`'s interface:
    ``set`` loads a subset of its state (the federated tensors), ``get`` returns that subset.
    ``base_model`` is the frozen base's file (its digest is what the task pins); ``base_sha256``
    may be given instead when the file is not at hand."""

    model: Any  # torch.nn.Module (a peft model, or one with hand-written adapters)
    train: Callable[[Any], int]
    evaluate: Callable[[Any], tuple[dict[str, float], int]] | None = None
    base_model: Path | None = None
    base_sha256: bytes | None = None
    _federated: tuple[str, ...] = field(default=(), repr=False)

    def base_digest(self) -> bytes | None:
        if self.base_sha256 is None and self.base_model is not None:
            self.base_sha256 = file_sha256(self.base_model)
        return self.base_sha256

    def get(self) -> dict[str, np.ndarray]:
        state = self.model.state_dict()
        names = self._federated or tuple(state)
        return {name: state[name].detach().cpu().numpy().astype(np.float32, copy=True) for name in names}

    def set(self, tensors: dict[str, np.ndarray]) -> None:
        import torch

        state = self.model.state_dict()
        unknown = sorted(set(tensors) - set(state))
        if unknown:
            raise ValueError(f"the federated tensors {unknown[:5]} are not in the local model")
        for name, value in tensors.items():
            if tuple(state[name].shape) != tuple(value.shape):
                local = tuple(state[name].shape)
                raise ValueError(f"federated tensor {name!r} has shape {tuple(value.shape)}, the local one {local}")
        self.model.load_state_dict(
            {name: torch.from_numpy(np.array(value, dtype=np.float32)) for name, value in tensors.items()},
            strict=False,
        )
        self._federated = tuple(tensors)


def check_trainer_base(trainer: Any, pinned: bytes) -> None:
    """Refuse to train (:class:`BaseModelRefused`) unless ``trainer``'s base is the pinned one."""
    digest = trainer.base_digest() if hasattr(trainer, "base_digest") else getattr(trainer, "base_sha256", None)
    try:
        check_base(pinned, digest)
    except BaseModelMismatch as exc:
        raise BaseModelRefused(str(exc)) from None


__all__ = ["AdapterTrainer", "BaseModelRefused", "check_trainer_base"]
