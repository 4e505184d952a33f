"""Input checks shared by the public functions; they run before any kernel."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from decimal import Decimal

import numpy as np

from .errors import AggregationError


def as_update(x: object, what: str = "update") -> np.ndarray:
    """A 1-D float32 array (contiguous: a strided view is copied once)."""
    if not isinstance(x, np.ndarray):
        raise AggregationError(f"{what} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise AggregationError(f"{what} must have dtype float32, got {x.dtype}")
    if x.ndim != 1:
        raise AggregationError(f"{what} must be 1-D (flatten the model), got shape {x.shape}")
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x


def check_output(out: object, size: int, what: str) -> np.ndarray:
    """A caller's output buffer: a writeable C-contiguous 1-D float32 array of ``size`` values."""
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.ndim != 1 or not out.flags.c_contiguous:
        raise AggregationError("out must be a C-contiguous 1-D float32 numpy.ndarray")
    if not out.flags.writeable:
        raise AggregationError("out must be writeable")
    if out.shape[0] != size:
        raise AggregationError(f"out has {out.shape[0]} values, {what} {size}")
    return out


def as_stack(stack: object) -> np.ndarray:
    """A 2-D (N, P) float32 array with N >= 1 (C-contiguous: otherwise copied once)."""
    if not isinstance(stack, np.ndarray):
        raise AggregationError(f"stack must be a numpy.ndarray of shape (N, P), got {type(stack).__name__}")
    if stack.dtype != np.float32:
        raise AggregationError(f"stack must have dtype float32, got {stack.dtype}")
    if stack.ndim != 2:
        raise AggregationError(f"stack must be 2-D (N sites, P parameters), got shape {stack.shape}")
    if stack.shape[0] < 1:
        raise AggregationError("stack holds no site update (N = 0)")
    if not stack.flags.c_contiguous:
        stack = np.ascontiguousarray(stack)
    return stack


def as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AggregationError(f"{what} must be an integer, got {value!r}")
    return int(value)


def as_real(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AggregationError(f"{what} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise AggregationError(f"{what} must be finite, got {v}")
    return v


def weight(value: object, what: str = "weight") -> float:
    w = as_real(value, what)
    if w < 0:
        raise AggregationError(f"{what} must be >= 0, got {w}")
    return w


def normalised_weights(weights: object, n: int) -> np.ndarray:
    """float64 weights that sum to 1; each finite and >= 0, their sum > 0."""
    if isinstance(weights, np.ndarray):
        if weights.ndim != 1:
            raise AggregationError(f"weights must be 1-D, got shape {weights.shape}")
        items: Sequence[object] = weights.tolist()
    elif isinstance(weights, Sequence) and not isinstance(weights, (str, bytes)):
        items = weights
    else:
        raise AggregationError(f"weights must be a sequence of numbers, got {type(weights).__name__}")
    if len(items) != n:
        raise AggregationError(f"got {len(items)} weights for {n} updates")
    w = np.array([weight(v, f"weights[{i}]") for i, v in enumerate(items)], dtype=np.float64)
    total = math.fsum(w.tolist())
    if not total > 0.0 or not math.isfinite(total):
        raise AggregationError(f"weights must have a finite, positive sum, got {total}")
    return w / total


def trim_count(beta: object, n: int) -> int:
    """floor(beta * n), beta taken at its shortest decimal form (0.29 * 100 is 29, not 28)."""
    b = as_real(beta, "beta")
    if not 0.0 <= b < 0.5:
        raise AggregationError(f"beta must satisfy 0 <= beta < 0.5, got {b}")
    k = math.floor(Decimal(repr(b)) * n)
    if 2 * k >= n:
        raise AggregationError(f"beta={b} trims 2*{k} of {n} values per coordinate, leaving none")
    return k
