"""Dataset cards: what each site's data look like, published by the site, signed by its identity
key and bound to its admission (the session the aggregator opened after admitting it).

A card (JSON, canonical: sorted keys, no spaces) holds the site id, the example count, the
schema (feature names and types), the label distribution (counts per label) and the fraction
of missing values per feature, and ``epsilon`` when the counts carry Laplace noise (the site
states its own privacy budget). It travels in ``MetricsReport.dataset_card`` with the
signature in ``MetricsReport.dataset_card_signature``: Ed25519 by the site's identity key over
:func:`card_message` (a context string, the session id, the card's bytes), so it can be
re-verified offline from the audit log's ``admission`` (the identity key) and ``dataset_card``
entries. Everything is bounded (:data:`MAX_CARD_BYTES`, :data:`MAX_FEATURES`, :data:`MAX_LABELS`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from attestation.errors import AttestflError

CARD_CONTEXT = b"attestfl dataset card v1\x00"
MAX_CARD_BYTES = 32_768
MAX_FEATURES = 512
MAX_LABELS = 64
MAX_NAME = 64
FEATURE_TYPES = ("float", "int", "bool", "category", "text")


class CardError(AttestflError, ValueError):
    """A dataset card that cannot be read (size, JSON, fields, bounds)."""


@dataclass(frozen=True)
class DatasetCard:
    site: str
    examples: float
    schema: tuple[tuple[str, str], ...]  # (feature name, type)
    labels: dict[str, float] = field(default_factory=dict)  # label -> count
    missing: dict[str, float] = field(default_factory=dict)  # feature -> fraction of missing values
    epsilon: float | None = None  # Laplace noise on the counts, when the site added it

    def to_json(self) -> str:
        return json.dumps(
            {
                "site": self.site,
                "examples": self.examples,
                "schema": [[name, kind] for name, kind in self.schema],
                "labels": self.labels,
                "missing": self.missing,
                "epsilon": self.epsilon,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    def label_distribution(self) -> dict[str, float]:
        total = sum(max(0.0, v) for v in self.labels.values())
        return {k: max(0.0, v) / total for k, v in self.labels.items()} if total > 0 else {}


def card_message(session_id: bytes, card_json: bytes) -> bytes:
    """What the site's identity key signs: the context, the session (its admission), the card."""
    return CARD_CONTEXT + len(session_id).to_bytes(2, "big") + session_id + card_json


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        raise CardError(f"{what} is not 1-{MAX_NAME} printable characters")
    return value


def _count(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CardError(f"{what} is not a finite number")
    return float(value)


def parse_card(text: str | bytes) -> DatasetCard:
    """A card from its JSON, every field checked; :class:`CardError` with a one-line reason."""
    if len(text) > MAX_CARD_BYTES:
        raise CardError(f"the dataset card is over {MAX_CARD_BYTES} bytes")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CardError(f"the dataset card is not JSON ({exc})") from None
    if not isinstance(data, dict) or set(data) != {"site", "examples", "schema", "labels", "missing", "epsilon"}:
        raise CardError("the dataset card is not a map of site, examples, schema, labels, missing, epsilon")
    schema = data["schema"]
    if not isinstance(schema, list) or len(schema) > MAX_FEATURES:
        raise CardError(f"schema is not a list of at most {MAX_FEATURES} features")
    features = []
    for item in schema:
        if not isinstance(item, list) or len(item) != 2:
            raise CardError("a schema feature is not [name, type]")
        name, kind = _name(item[0], "a feature name"), item[1]
        if kind not in FEATURE_TYPES:
            raise CardError(f"feature {name!r} has type {str(kind)[:20]!r}, not one of {', '.join(FEATURE_TYPES)}")
        features.append((name, str(kind)))
    labels, missing = data["labels"], data["missing"]
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise CardError(f"labels is not a map of at most {MAX_LABELS} labels")
    if not isinstance(missing, dict) or len(missing) > MAX_FEATURES:
        raise CardError("missing is not a map of features")
    epsilon = data["epsilon"]
    if epsilon is not None and (_count(epsilon, "epsilon") <= 0):
        raise CardError("epsilon is not a number > 0")
    return DatasetCard(
        _name(data["site"], "site"),
        _count(data["examples"], "examples"),
        tuple(features),
        {_name(k, "a label"): _count(v, f"label {k!r}") for k, v in labels.items()},
        {_name(k, "a feature name"): _count(v, f"missing {k!r}") for k, v in missing.items()},
        None if epsilon is None else float(epsilon),
    )


def schema_mismatch(card: DatasetCard, expected: tuple[tuple[str, str], ...]) -> str | None:
    """None when the card's schema is the task's, else a one-line reason."""
    if card.schema == expected:
        return None
    have, want = dict(card.schema), dict(expected)
    missing = [name for name in want if name not in have]
    extra = [name for name in have if name not in want]
    retyped = [f"{name} ({have[name]}, not {want[name]})" for name in want if name in have and have[name] != want[name]]
    parts = []
    if missing:
        parts.append(f"lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"has unexpected {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    if retyped:
        parts.append(f"types differ: {', '.join(retyped[:5])}")
    if not parts:
        parts.append("the features are in another order")
    return "the dataset card's schema is not the task's: " + "; ".join(parts)


def label_shift(before: DatasetCard, after: DatasetCard) -> float:
    """Total-variation distance between two cards' label distributions (0 to 1)."""
    p, q = before.label_distribution(), after.label_distribution()
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


__all__ = [
    "CARD_CONTEXT",
    "CardError",
    "DatasetCard",
    "card_message",
    "label_shift",
    "parse_card",
    "schema_mismatch",
]
