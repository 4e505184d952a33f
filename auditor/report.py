"""The auditor's report: one self-contained HTML page (inline CSS, no scripts, no external
assets), rendered from a :class:`~auditor.verify.Verification`.

Every logged string is escaped (:func:`html.escape`): site ids, reasons and metrics come
from sites and from the operator, neither of whom the reader trusts.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from auditor.intelligence_report import render_intelligence
from auditor.verify import Verification

MAX_TIMELINE = 2000
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1b1f24;max-width:1200px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}
table{border-collapse:collapse;width:100%;font-size:.85rem}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f8}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem;word-break:break-all}
.verdict{padding:1rem 1.2rem;border-radius:.4rem;font-size:1.1rem;margin:1rem 0}
.ok{background:#dafbe1;border:2px solid #1a7f37}.bad{background:#ffebe9;border:2px solid #cf222e}
.yes{color:#1a7f37;font-weight:600}.no{color:#cf222e;font-weight:600}.muted{color:#57606a}
ul{margin:.2rem 0;padding-left:1.2rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "—" if value is None else str(value)


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], table_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _list(items: Iterable[str]) -> str:
    items = list(items)
    return (
        "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>" if items else '<span class="muted">none</span>'
    )


def _map(value: Any) -> dict[Any, Any]:
    """A logged value that should be a map, or an empty one (the verifier reported it)."""
    return value if isinstance(value, dict) else {}


def _summary(kind: str, fields: dict[str, Any]) -> str:
    if kind == "admission":
        return f"site {fields.get('site')}: {'admitted' if fields.get('admitted') else 'refused'}"
    if kind in ("update_accepted", "metrics"):
        return f"site {fields.get('site')}, round {fields.get('round')}"
    if kind == "round":
        participants = len(_map(fields.get("participants")))
        return (
            f"round {fields.get('round')}: {participants} participant(s), model {str(fields.get('model_sha256'))[:16]}…"
        )
    if kind in ("session", "update_refused"):
        return f"site {fields.get('site')}" + (f": {fields.get('reason')}" if "reason" in fields else "")
    if kind == "config":
        policy_id = _map(fields.get("admission")).get("policy_id")
        return f"aggregator.toml sha256 {str(fields.get('aggregator_toml_sha256'))[:16]}…, policy {policy_id}"
    if kind in ("aggregator_start", "handover"):
        key = fields.get("ed25519")
        return f"log key {key.hex() if isinstance(key, bytes) else key}"
    return ", ".join(f"{k}={v}" for k, v in fields.items() if not isinstance(v, (bytes, dict, list)))[:200]


def render_report(result: Verification) -> str:
    parts: list[str] = []
    if result.valid:
        verdict = (
            f'<div class="verdict ok" id="verdict"><strong>VALID</strong> — {result.records} entries, '
            f"{len(result.heads)} signed tree heads; every head, the aggregator's evidence and every admission "
            "re-verified.</div>"
        )
    else:
        first = result.first_problem
        detail = (
            f"first bad entry <strong>{first.index}</strong>: <code>{_e(first.check)}</code> — {_e(first.message)}"
            if first
            else ""
        )
        verdict = f'<div class="verdict bad" id="verdict"><strong>INVALID</strong> — {detail}</div>'
    parts.append(verdict)
    if result.problems:
        parts.append(
            "<h2>Problems</h2>"
            + _table(
                ["entry", "check", "what"],
                ([str(p.index), f"<code>{_e(p.check)}</code>", _e(p.message)] for p in result.problems),
                "problems",
            )
        )
    if result.warnings:
        parts.append("<h2>Warnings</h2>" + _list(result.warnings))
    latest = result.heads[-1] if result.heads else None
    if latest is not None:
        parts.append(
            f'<p class="muted">Latest signed tree head: size {latest.tree_size}, '
            f"root <code>{latest.root_hash.hex()}</code>, "
            f"signed {_e(_time(latest.timestamp))} by <code>{latest.key.hex()}</code>.</p>"
        )

    parts.append("<h2>Aggregator (TEE evidence)</h2>")
    rows = []
    for run in result.runs:
        c = _map(run.claims)
        measurement = c.get("measurement") or "?"
        tcb = c.get("reported_tcb") or c.get("tee_tcb_svn") or "?"
        if isinstance(tcb, dict):
            tcb = ", ".join(f"{k}={v}" for k, v in tcb.items())
        rows.append(
            [
                str(run.index),
                _e(run.kind),
                _e(_time(run.time)),
                _e(run.platform or "?"),
                f"<code>{_e(measurement)}</code>",
                f"<code>{_e(tcb)}</code>",
                _e(c.get("tcb_status", "—")),
                '<span class="no">yes — proves nothing about hardware</span>' if c.get("simulated") else "no",
                '<span class="no">yes</span>' if c.get("debug") else "no",
                f"<code>{_e(run.key)}</code>",
                '<span class="yes">accepted</span>'
                if not run.reasons
                else '<span class="no">rejected</span>' + _list(run.reasons),
            ]
        )
    parts.append(
        _table(
            [
                "entry",
                "kind",
                "time",
                "platform",
                "measurement",
                "TCB",
                "TCB status",
                "simulated",
                "debug",
                "log key (Ed25519)",
                "auditor's policy",
            ],
            rows,
            "aggregator",
        )
    )

    parts.append("<h2>Configuration</h2>")
    rows = []
    for entry in result.configs:
        admission = _map(entry.fields.get("admission"))
        task = entry.fields.get("task")
        rows.append(
            [
                str(entry.index),
                _e(_time(entry.time)),
                f"<code>{_e(entry.fields.get('aggregator_toml_sha256'))}</code>",
                f"<code>{_e(admission.get('policy_id'))}</code>",
                _e(", ".join(sorted(str(s) for s in _map(admission.get("sites"))))),
                _e(_fmt(task)) if task else "—",
            ]
        )
    parts.append(
        _table(
            ["entry", "time", "aggregator.toml sha256", "attestation policy", "sites allowed", "task"],
            rows,
            "configuration",
        )
    )

    parts.append("<h2>Sites: admission decisions</h2>")
    rows = [
        [
            str(a.index),
            _e(_time(a.time)),
            _e(a.site),
            '<span class="yes">admitted</span>' if a.admitted else '<span class="no">refused</span>',
            _e(a.platform or "—"),
            _list(a.reasons),
            '<span class="yes">confirmed</span>' if a.confirmed else '<span class="no">NOT confirmed</span>',
        ]
        for a in result.admissions
    ]
    parts.append(
        _table(["entry", "time", "site", "verdict", "platform", "reasons", "offline re-run"], rows, "admissions")
    )

    parts.append("<h2>Rounds</h2>")
    rows = []
    for r in result.rounds:
        people = _list(
            f"{site}: weight {p.get('weight')}, update {p.get('update_sha256')}" for site, p in r.participants.items()
        )
        dp = "—" if not r.dp else _e(_fmt(r.dp) + (f"; ε={r.epsilon:.4g}" if isinstance(r.epsilon, float) else ""))
        rows.append(
            [
                str(r.index),
                _e(_time(r.time)),
                _e(f"{r.round} (attempt {r.attempt})"),
                people,
                f"<code>{_e(r.model_sha256)}</code>",
                _e(_fmt(r.strategy)),
                _e(_fmt(r.clip_norm)),
                dp,
            ]
        )
    parts.append(
        _table(
            ["entry", "time", "round", "participants", "model sha256", "strategy", "clip norm", "DP"], rows, "rounds"
        )
    )

    parts.append(render_intelligence(result.entries))  # auditor/intelligence_report.py
    parts.append("<h2>Timeline</h2>")
    shown = result.entries[:MAX_TIMELINE]
    parts.append(
        _table(
            ["entry", "time", "event", "summary"],
            ([str(e.index), _e(_time(e.time)), _e(e.kind), _e(_summary(e.kind, e.fields))] for e in shown),
            "timeline",
        )
    )
    if len(result.entries) > len(shown):
        parts.append(
            f'<p class="muted">… and {len(result.entries) - len(shown)} more entries '
            "(see <code>attestfl audit verify --json</code>).</p>"
        )

    title = f"attestfl audit report — {_e(result.directory.name)}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
        f'<body><h1>{title}</h1><p class="muted">Log <code>{_e(result.directory)}</code>, verified '
        f"{_e(datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%SZ'))} with attestfl.</p>{''.join(parts)}</body></html>\n"
    )
