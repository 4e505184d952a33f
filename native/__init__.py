"""Numba aggregation kernels for the attestfl aggregator (float32 in, float32 out).

A model is flattened by the caller into one 1-D float32 array; a stack of N site
updates is an (N, P) float32 array. Every input is validated before a kernel runs
(``AggregationError``); NaN/inf in an update raises ``NonFiniteUpdateError`` naming
the site, it is never averaged.

Precision choices: ``fedavg``, the trimmed/median means, ``l2_norms`` and multi-Krum
accumulate in float64 inside cache-resident blocks or, for fedavg of 5 to 12 updates
(``native/_small_means.py``, generated), in registers (no extra memory traffic);
``Accumulator`` accumulates in float32 in place, like ``torch.Tensor.add_``, because a
float64 running sum would double its memory and the bytes moved per update; Krum's
squared distances are float32 over 512-value runs summed in float64.

Kernels are ``numba.njit(cache=True)``, compiled lazily on first use and loaded from
the on-disk cache (``__pycache__`` next to this package) by later processes.

On x86-64 Linux the streaming kernels (``Accumulator`` adds above 48K values and its mean,
``fedavg``) share their work with native helper threads (``native/_pool.py``: a ``nogil``
loop per helper, no GIL hand-off per call); the order statistics and Krum, and the streaming
kernels elsewhere, use ``native/_workshare.py`` and numba's parallel loops. ``fedavg(...,
out=)`` and ``Accumulator(size, out=)`` write into a caller's buffer.
"""

from .accumulator import Accumulator, Contribution
from .dp import add_gaussian_noise, clip_by_l2, l2_norms
from .errors import AggregationError, NonFiniteUpdateError
from .robust import coordinate_median, fedavg, krum, krum_scores, pairwise_sq_distances, trimmed_mean

__all__ = [
    "Accumulator",
    "AggregationError",
    "Contribution",
    "NonFiniteUpdateError",
    "add_gaussian_noise",
    "clip_by_l2",
    "coordinate_median",
    "fedavg",
    "krum",
    "krum_scores",
    "l2_norms",
    "pairwise_sq_distances",
    "trimmed_mean",
]
