"""The audit report's federation-intelligence section (aggregator/surveillance.py's entries):
per round the worst site and the largest subgroup gap (from the last ``evaluation`` entry of
the round), the drift alerts, the quarantines and the released contributor values. Every
logged string is escaped: site ids and metric names come from sites."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], table_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _risk_section(evaluations: dict[Any, Any]) -> str:
    """Federation risk: per round (the last evaluation entry of each) the worst site and the largest subgroup gap."""
    rows = []
    for round_number, entry in sorted(evaluations.items(), key=lambda item: str(item[0]).zfill(12)):
        f = entry.fields
        gap = f.get("largest_subgroup_gap")
        gap_text = (
            f"{_number(gap.get('gap'))} ({_e(gap.get('site'))}, {_e(gap.get('attribute'))})"
            if isinstance(gap, dict)
            else "—"
        )
        rows.append(
            [
                str(entry.index),
                _e(round_number),
                _e(f.get("worst_site") or "—"),
                _number(f.get("worst_accuracy")),
                gap_text,
                _number(f.get("worst_auroc")),
                _number(f.get("worst_ece")),
                _e(f.get("sites")),
            ]
        )
    return "<h2>Federation risk (worst site first)</h2>" + _table(
        [
            "entry",
            "model of round",
            "worst site",
            "worst accuracy",
            "largest subgroup gap",
            "worst AUROC",
            "worst ECE",
            "sites reporting",
        ],
        rows,
        "risk",
    )


def _drift_section(alerts: list[Any], quarantines: list[Any]) -> str:
    """Drift alerts and quarantines, in log order."""
    rows = [
        [
            str(e.index),
            _e(e.kind),
            _e(e.fields.get("round")),
            _e(e.fields.get("site", ", ".join(map(str, e.fields.get("sites") or [])))),
            _e(e.fields.get("rule", "; ".join(f"{k}: {v}" for k, v in (e.fields.get("reasons") or {}).items()))),
            _number(e.fields.get("value")),
            _e("yes" if e.kind == "quarantine" or e.fields.get("quarantined") else "no"),
        ]
        for e in sorted(alerts + quarantines, key=lambda e: e.index)
    ]
    return "<h2>Drift alerts and quarantines</h2>" + _table(
        ["entry", "kind", "round", "site", "rule / reason", "value", "excluded"], rows, "drift"
    )


def _contribution_section(releases: list[Any]) -> str:
    """Contributor value as released: each site's value, best first."""
    rows = []
    for entry in releases:
        values = entry.fields.get("values") or {}
        ranking = entry.fields.get("ranking") or []
        rows.append(
            [
                str(entry.index),
                _e(entry.kind),
                _e(entry.fields.get("epsilon") or "none"),
                "<br>".join(f"{_e(site)}: {_number(values.get(site))}" for site in ranking),
            ]
        )
    return "<h2>Contributor value (as released)</h2>" + _table(
        ["entry", "kind", "Laplace epsilon", "sites, best first"], rows, "contribution"
    )


def render_intelligence(entries: Iterable[Any]) -> str:
    """HTML (empty when the log holds no evaluation, alert, quarantine or release entry)."""
    evaluations: dict[Any, Any] = {}
    alerts: list[Any] = []
    quarantines: list[Any] = []
    releases: list[Any] = []
    for entry in entries:
        f = entry.fields
        if entry.kind == "evaluation":
            evaluations[f.get("round")] = entry
        elif entry.kind == "drift_alert":
            alerts.append(entry)
        elif entry.kind == "quarantine":
            quarantines.append(entry)
        elif entry.kind == "contribution_release" or (entry.kind == "contribution" and "values" in f):
            releases.append(entry)
    if not (evaluations or alerts or quarantines or releases):
        return ""
    parts = [_risk_section(evaluations)]
    if alerts or quarantines:
        parts.append(_drift_section(alerts, quarantines))
    if releases:
        parts.append(_contribution_section(releases))
    return "".join(parts)


__all__ = ["render_intelligence"]
