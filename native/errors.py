"""Exceptions raised by the native aggregation kernels."""

from __future__ import annotations

from attestation.errors import AttestflError


class AggregationError(AttestflError, ValueError):
    """Invalid aggregation input (shape, dtype, weights, parameters) or state."""


class NonFiniteUpdateError(AggregationError):
    """A site update holds NaN or +-inf; it is reported, never averaged.

    ``site_index`` is the position of the offending update in the input (row of the
    stack, item of the sequence, or the ``site`` given to ``Accumulator.add``); it is
    ``None`` only for single-array helpers called without a site index.
    """

    def __init__(self, site_index: int | None, message: str | None = None) -> None:
        self.site_index = site_index
        if message is None:
            where = "an update" if site_index is None else f"the update of site {site_index}"
            message = f"{where} holds non-finite values (NaN or inf); it is not aggregated"
        super().__init__(message)
