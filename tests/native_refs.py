"""numpy float64 reference implementations and hypothesis strategies for the native tests."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOATS = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
# Few distinct values: many ties per coordinate.
TIED = st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])


@st.composite
def stacks(draw, min_n: int = 1, max_n: int = 12, max_p: int = 200, ties: bool | None = None) -> np.ndarray:
    n = draw(st.integers(min_n, max_n))
    p = draw(st.integers(0, max_p))
    use_ties = draw(st.booleans()) if ties is None else ties
    return draw(hnp.arrays(np.float32, (n, p), elements=TIED if use_ties else FLOATS))


def ref_fedavg(stack: np.ndarray, weights) -> np.ndarray:
    # Normalise the weights first: np.average multiplies before dividing, so tiny (subnormal)
    # weights underflow to a mean of 0 in the reference itself.
    w = np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), stack.astype(np.float64), axes=1)


def ref_median(stack: np.ndarray) -> np.ndarray:
    s = np.sort(stack.astype(np.float64), axis=0)
    n = s.shape[0]
    return ((s[(n - 1) // 2] + s[n // 2]) / 2.0).astype(np.float32)


def ref_trim_count(beta: float, n: int) -> int:
    return math.floor(Decimal(repr(beta)) * n)


def ref_trimmed_mean(stack: np.ndarray, beta: float) -> np.ndarray:
    n = stack.shape[0]
    k = ref_trim_count(beta, n)
    s = np.sort(stack.astype(np.float64), axis=0)
    return s[k : n - k].mean(axis=0)


def ref_distances(stack: np.ndarray) -> np.ndarray:
    x = stack.astype(np.float64)
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)


def ref_krum_scores(stack: np.ndarray, f: int) -> np.ndarray:
    d = ref_distances(stack)
    n = stack.shape[0]
    return np.array([np.sort(np.delete(d[i], i))[: n - f - 2].sum() for i in range(n)])


def tol(stack: np.ndarray) -> float:
    """Absolute float32 tolerance for means of values up to max |stack|."""
    scale = float(np.abs(stack).max()) if stack.size else 1.0
    return 4e-7 * max(scale, 1.0) * 4


def assert_generated_is_current(tool: str, module: str) -> None:
    """native/``module`` is what tools/``tool`` prints now (a generated kernel file is committed:
    numba's on-disk cache needs a real source file)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    generated = subprocess.run(
        [sys.executable, str(root / "tools" / tool)], capture_output=True, text=True, check=True
    ).stdout
    assert generated == (root / "native" / module).read_text(), (
        f"native/{module} is stale: python tools/{tool} > native/{module}"
    )
