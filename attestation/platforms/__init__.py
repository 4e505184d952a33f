"""Platforms: one package per kind of evidence, behind one registry.

* :mod:`.base` — the :class:`~.base.Platform` protocol, :class:`~.base.EvidenceInputs`, the
  neutral claims every platform reports (:data:`~.base.NEUTRAL_CLAIMS`);
* :mod:`.registry` — the one registry: the built-ins, then the ``attestfl.platforms`` entry points;
* :mod:`.snp` (AMD SEV-SNP), :mod:`.tdx` (Intel TDX), :mod:`.nvidia` (NVIDIA CC GPUs) — the
  built-in platforms, each with ``abi``, ``verify``, ``validate``, ``claims``, ``appraise``,
  ``collateral``/``roots`` and ``platform`` modules; each package's ``NAME`` is the platform's
  registered name, for code that must name one (an attester saying what it produced).

This package imports nothing: the registry loads platforms by name, so that platforms depend
on the core and never the reverse. How to add one: ``docs/extending.md`` ("Add a platform").
"""
