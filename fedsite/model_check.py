"""Does the site's trainer hold the federation's model? Checked on the first task, before the
site downloads or trains anything, so that a trainer built for another model stops with one line
that names the differing tensors (not a raw torch error after joining).

The task's :class:`~protocol.tensors.ModelSpec` lists every tensor of the model (name, shape,
dtype: float32 on the wire). The trainer's ``model.state_dict()`` must have the same names and
shapes; any real or integer dtype is accepted (the site casts into its own dtypes, as ``attestfl
model init`` cast them out), complex or non-numeric tensors are not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from attestation.errors import EXIT_UNUSABLE, AttestflError
from protocol.tensors import ModelSpec

#: At most this many differing tensors are named in the message (then a count).
SHOWN = 4


class ModelMismatch(AttestflError, ValueError):
    """The site's trainer does not hold the task's model (exit 2: fix the trainer or the initial model)."""

    exit_code = EXIT_UNUSABLE


def trainer_tensors(trainer: Any) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """Name -> (shape, dtype) of a trainer's torch model, or None when it has no ``state_dict``
    (e.g. the Flower adapter, which checks the arrays its client returns itself)."""
    state_dict = getattr(getattr(trainer, "model", None), "state_dict", None)
    if not callable(state_dict):
        return None
    return {
        str(name): (tuple(int(d) for d in tensor.shape), str(tensor.dtype).removeprefix("torch."))
        for name, tensor in state_dict().items()
    }


def _same(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A scalar travels as one element (torch loads a [1] tensor into a scalar buffer)."""
    return shape or (1,)


def _numeric(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "half", "double", "int", "uint", "bool", "long", "short"))


def differences(local: dict[str, tuple[tuple[int, ...], str]], spec: ModelSpec, *, subset: bool = False) -> list[str]:
    """What differs between the trainer's tensors and the task's model spec, one phrase each.
    ``subset``: the task federates only some of the model's tensors (an adapter task: the frozen
    base stays at the site), so tensors the spec does not name are not differences."""
    wanted = {t.name: t for t in spec.tensors}
    found: list[str] = []
    for name in wanted:
        if name not in local:
            found.append(f"{name} {list(wanted[name].shape)} missing from the trainer's model")
    for name, (shape, dtype) in local.items():
        if name not in wanted:
            if subset:
                continue
            found.append(f"{name} {list(shape)} not in the task's model")
        elif _same(shape) != _same(tuple(wanted[name].shape)):
            found.append(f"{name} is {list(shape)} in the trainer, {list(wanted[name].shape)} in the task")
        elif not _numeric(dtype):
            found.append(f"{name} has dtype {dtype} (only real and integer tensors travel, as float32)")
    return found


def _listed(items: Iterable[str]) -> str:
    items = list(items)
    shown = "; ".join(items[:SHOWN])
    return shown + (f"; and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def check_trainer_model(trainer: Any, spec: ModelSpec, *, subset: bool = False) -> None:
    """Raise :class:`ModelMismatch` (one line) when the trainer's model is not the task's (with
    ``subset``: does not hold every tensor the task federates, in its shape)."""
    local = trainer_tensors(trainer)
    if local is None:
        return
    found = differences(local, spec, subset=subset)
    if found:
        raise ModelMismatch(
            f"the trainer's model is not the federation's model ({len(spec.tensors)} tensors, "
            f"{spec.parameter_count} parameters): {_listed(found)}. Nothing was trained or sent. Build the trainer "
            "on the model the operator ran `attestfl model init` on (the same MODULE:FACTORY), or ask the operator "
            "to run `attestfl model init` of your model for the task's initial_model"
        )
