"""The auditor's report: one self-contained HTML page (inline CSS and SVG, no scripts, no
external assets), rendered from a :class:`~auditor.verify.Verification`.

It shows the verdict (VALID, SIMULATED, AUTHENTIC BUT NOT TRUSTED BY YOUR POLICY, INVALID:
:mod:`auditor.verdict`), the attestfl version and the auditor's policy it was verified under,
what a verified log does not prove, the aggregator's evidence, the admission policy in force
(its text), every admission with its evidence claims (expandable ``<details>``), charts
(:mod:`auditor.charts`: site metrics per round, DP ε per round, participants per round), rounds
and the timeline.

Every logged string is escaped (:func:`html.escape`): site ids, reasons and metrics come
from sites and from the operator, neither of whom the reader trusts.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from auditor.charts import bar_chart, line_chart
from auditor.intelligence_report import render_intelligence
from auditor.show import admission_view, plain, policy_view, rule_text, summary, tcb_of
from auditor.verdict import HEADLINES, counts, simulated_detail
from auditor.verify import Entry, Verification

MAX_TIMELINE = 2000
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1b1f24;max-width:1200px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}
table{border-collapse:collapse;width:100%;font-size:.85rem}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f8}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem;word-break:break-all}
.verdict{padding:1rem 1.2rem;border-radius:.4rem;font-size:1.1rem;margin:1rem 0}
.ok{background:#dafbe1;border:2px solid #1a7f37}.bad{background:#ffebe9;border:2px solid #cf222e}
.sim{background:#fff8c5;border:3px dashed #9a6700}.untrusted{background:#fff1e5;border:2px solid #bc4c00}
.box{border:1px solid #d0d7de;border-left:4px solid #9a6700;padding:.5rem 1rem;background:#fbfbfc}
details summary{cursor:pointer}.evidence-row td{border-top:none;background:#fbfbfc}table.facts,table.claims{width:auto}
pre{background:#f6f8fa;padding:.5rem;overflow-x:auto;font-size:.8rem}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.chart{border:1px solid #d0d7de;background:#fff;width:560px;height:auto}
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


def _verdict(result: Verification) -> str:
    verdict = result.verdict
    if verdict == "valid":
        detail = (
            f"{_e(counts(result))}; every head, the aggregator's evidence and every admission re-verified under your "
            "policy."
        )
    elif verdict == "simulated":
        detail = (
            f"{_e(counts(result))}. {_e(simulated_detail(result)[0].upper() + simulated_detail(result)[1:])}. "
            "<strong>Simulated evidence proves nothing about hardware</strong>; anyone holding the simulated "
            "vendor's keys can produce it."
        )
    elif verdict == "not_trusted":
        detail = (
            f"{_e('; '.join(result.not_trusted))}. The log is intact (no entry altered since it was signed, every "
            "head signed by the key the evidence binds), but your policy does not accept the aggregator's evidence."
        )
    else:
        first = result.first_tampering or result.first_problem
        detail = (
            f"first bad entry <strong>{first.index}</strong>: <code>{_e(first.check)}</code> — {_e(first.message)}"
            if first
            else ""
        )
    css = {"valid": "ok", "simulated": "sim", "not_trusted": "untrusted", "invalid": "bad"}[verdict]
    return (
        f'<div class="verdict {css}" id="verdict" data-verdict="{verdict}"><strong>{HEADLINES[verdict]}</strong> — '
        f"{detail}</div>"
    )


NOT_PROVEN = (
    "That the hardware is genuine, when the evidence is simulated (SIMULATED in the verdict): anyone with the "
    "simulated vendor's keys can write such a log.",
    "That this copy is the whole log: the operator can cut it after any signed head or show an older copy. Only a "
    "later head that a site or a witness kept (attestfl audit head) shows a truncation, a rollback or a fork.",
    "That the aggregator's code is what you expect, unless your policy pins its measurement.",
    "Events the enclave never saw or chose not to log (peers refused before they reached the TEE leave no entry).",
    "The truth of what sites reported: metrics and updates come from sites; the log proves what was received and "
    "aggregated, not that a site trained honestly.",
    "The time: entry times are the TEE's clock, which on SEV-SNP and TDX the host controls.",
    "What the model is or does: the log holds model digests, not models; compare a model file's SHA-256 with the "
    "round's model digest.",
)


def _about(result: Verification, policy_file: str | None, policy_text: str | None) -> str:
    from importlib import metadata

    try:
        version = metadata.version("attestfl")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    if policy_file is None:
        policy = (
            "the default policy: real AMD and Intel roots only, debug forbidden, no measurement pinned "
            "(no <code>--policy</code> given)"
        )
    else:
        digest = ""
        if policy_text is not None:
            import hashlib

            digest = f", sha256 <code>{hashlib.sha256(policy_text.encode()).hexdigest()}</code>"
        policy = f"<code>{_e(policy_file)}</code>{digest}"
    text = (
        f'<details id="auditor-policy-text"><summary>the auditor\'s policy file</summary><pre>{_e(policy_text)}</pre>'
        "</details>"
        if policy_text is not None
        else ""
    )
    return (
        f'<div id="about"><p class="muted">Verified with attestfl <strong id="attestfl-version">{_e(version)}</strong> '
        f"under the auditor's policy {policy}.</p>{text}</div>"
    )


def _charts(result: Verification) -> str:
    """Site metrics per model, DP ε per round, participants per round: inline SVG."""
    metrics: dict[str, dict[str, list[tuple[float, float]]]] = {}
    weighted: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for entry in result.entries:
        if entry.kind != "metrics":
            continue
        site, number, values = entry.fields.get("site"), entry.fields.get("round"), entry.fields.get("metrics")
        examples = entry.fields.get("examples")
        if not isinstance(site, str) or type(number) is not int or not isinstance(values, dict):
            continue
        weight = float(examples) if isinstance(examples, (int, float)) and examples > 0 else 1.0
        for name, value in values.items():
            charted = str(name) in metrics or len(metrics) < 8  # at most 8 metric names, each with every point
            if isinstance(value, (int, float)) and not isinstance(value, bool) and charted:
                # metrics logged in round N evaluate round N's model: the one before its training (1: the
                # initial model, rounds + 1: the final model), the numbering of serve's table and metrics.csv
                metrics.setdefault(str(name), {}).setdefault(site, []).append((number, float(value)))
                weighted.setdefault(str(name), {}).setdefault(number, []).append((float(value), weight))
    charts = []
    ordered = sorted(metrics, key=lambda n: (n != "accuracy", n))[:4]
    for number, name in enumerate(ordered):
        overall = [
            (float(x), sum(v * w for v, w in pairs) / sum(w for _, w in pairs))
            for x, pairs in sorted(weighted[name].items())
        ]
        series: dict[str, list[tuple[float, float]]] = {"all sites (weighted)": overall}
        series.update(sorted(metrics[name].items()))
        bounded = all(0.0 <= y <= 1.0 for points in series.values() for _, y in points)
        charts.append(
            line_chart(
                series,
                chart_id="chart-metrics" if number == 0 else f"chart-metrics-{number}",
                title=f"{name} per round, per site (as the sites reported it)",
                x_label="round (its model, before training; 1: initial, last: final)",
                y_label=name,
                y_range=(0.0, 1.0) if bounded else None,
                emphasise="all sites (weighted)",
            )
        )
    last: dict[int, Any] = {}
    for r in result.rounds:
        last[r.round] = r  # the last attempt of each round
    epsilon = [(float(n), float(r.epsilon)) for n, r in sorted(last.items()) if isinstance(r.epsilon, (int, float))]
    if epsilon:
        charts.append(
            line_chart(
                {"ε (cumulative)": epsilon},
                chart_id="chart-epsilon",
                title="differential privacy: ε spent after each round",
                x_label="round",
                y_label="ε",
            )
        )
    if last:
        charts.append(
            bar_chart(
                [(float(n), float(len(r.participants))) for n, r in sorted(last.items())],
                chart_id="chart-participants",
                title="participants per round (updates aggregated)",
                x_label="round",
                y_label="participants",
            )
        )
    if not charts:
        return '<p class="muted">No metrics or rounds in this log.</p>'
    note = (
        '<p class="muted">Metrics are what each site reported about the model it received; the log proves they were '
        "received, not that they are true. No ε chart: this task used no differential privacy.</p>"
        if not epsilon
        else '<p class="muted">Metrics are what each site reported about the model it received; the log proves '
        "they were received, not that they are true. ε as the aggregator's accountant computed it.</p>"
    )
    return f'<div class="charts" id="charts">{"".join(charts)}</div>{note}'


def _claims_table(claims: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(_fmt(v))}</code></td></tr>" for k, v in plain(claims).items())
    return f'<table class="claims">{rows}</table>'


def _policy_details(config: Entry) -> str:
    view = policy_view(config) or {}
    sites = _map(view.get("sites"))
    rules = "".join(
        f"<tr><td>{_e(site)}</td><td><code>{_e(rule_text(rule))}</code></td></tr>" for site, rule in sites.items()
    )
    return (
        f'<details class="policy" open><summary>admission policy <code>{_e(view.get("policy_id"))}</code> '
        f"(config entry {config.index})</summary>"
        f"<p>Attestation policy file, as logged:</p><pre>{_e(view.get('attestation_policy'))}</pre>"
        f"<p>Site rules:</p><table><thead><tr><th>site</th><th>rule</th></tr></thead><tbody>{rules}</tbody></table>"
        "</details>"
    )


def _evidence_details(view: dict[str, Any]) -> str:
    e = view["evidence"]
    if not e.get("sha256") and not e.get("claims"):
        return '<span class="muted">no evidence logged</span>'
    label = f"evidence: {e.get('platform') or e.get('format') or '?'}"
    if e.get("simulated"):
        label += " (SIMULATED)"
    if e.get("measurement"):
        label += f", measurement {str(e['measurement'])[:16]}…"
    key = view["identity_key"]
    facts = [
        ("evidence sha256", e.get("sha256")),
        ("evidence format", e.get("format")),
        ("measurement", e.get("measurement")),
        ("TCB", e.get("tcb")),
        ("TCB status", e.get("tcb_status")),
        ("chip id", e.get("chip_id")),
        ("PPID", e.get("ppid")),
        ("identity key", key.get("public")),
        ("identity key fingerprint", key.get("fingerprint")),
        ("session key x25519", view["session_keys"].get("x25519")),
        ("session key ed25519", view["session_keys"].get("ed25519")),
        ("appraised at", view.get("appraised_at")),
        ("claims from", view.get("claims_from")),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in facts if v)
    return (
        f'<details class="evidence" data-entry="{view["index"]}"><summary>{_e(label)}</summary>'
        f'<table class="facts">{rows}</table><p>All claims:</p>{_claims_table(e.get("claims") or {})}</details>'
    )


def _overview(result: Verification, policy_file: str | None, policy_text: str | None) -> list[str]:
    """Verdict, what was checked, what it does not prove, charts, problems, warnings, latest tree head."""
    parts: list[str] = [_verdict(result), _about(result, policy_file, policy_text)]
    parts.append(
        '<div class="box" id="not-proven"><h2>What this does not prove</h2>'
        + _list(NOT_PROVEN)
        + "<p>See docs/auditors.md (“What it does not show”).</p></div>"
    )
    parts.append("<h2>Charts</h2>" + _charts(result))
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
    return parts


def _aggregator_section(result: Verification) -> str:
    """Aggregator (TEE evidence): one row per run, with the auditor's policy's verdict."""
    rows = []
    for run in result.runs:
        c = _map(run.claims)
        measurement = c.get("measurement") or "?"
        tcb = tcb_of(c) or "?"
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
                else (
                    '<span class="no">not trusted</span>' + _list(run.not_trusted)
                    if run.not_trusted
                    else '<span class="no">rejected</span>' + _list(run.reasons)
                ),
            ]
        )
    return "<h2>Aggregator (TEE evidence)</h2>" + _table(
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


def _configuration_section(result: Verification) -> str:
    """Configuration: one row per config entry."""
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
    return "<h2>Configuration</h2>" + _table(
        ["entry", "time", "aggregator.toml sha256", "attestation policy", "sites allowed", "task"],
        rows,
        "configuration",
    )


def _policy_section(result: Verification) -> str:
    """Admission policy in force: each distinct policy once, in the order first logged."""
    seen: set[Any] = set()
    policies = []
    for entry in result.configs:
        policy_id = str(_map(entry.fields.get("admission")).get("policy_id"))[:200]
        if policy_id not in seen:
            seen.add(policy_id)
            policies.append(_policy_details(entry))
    return '<h2>Admission policy in force</h2><div id="policy">' + "".join(policies) + "</div>"


def _admissions_section(result: Verification) -> str:
    """Sites: admission decisions, each with its evidence as the offline re-run appraised it."""
    by_index = {e.index: e for e in result.entries}
    config_of: dict[int, Entry] = {}
    current: Entry | None = None
    for entry in result.entries:
        if entry.kind == "config":
            current = entry
        elif entry.kind == "admission" and current is not None:
            config_of[entry.index] = current
    headers = ["entry", "time", "site", "verdict", "platform", "reasons", "policy", "offline re-run"]
    body = []
    for a in result.admissions:
        view = admission_view(by_index[a.index], a, config_of.get(a.index))
        cells = [
            str(a.index),
            _e(_time(a.time)),
            _e(a.site),
            '<span class="yes">admitted</span>' if a.admitted else '<span class="no">refused</span>',
            _e(a.platform or "—"),
            _list(a.reasons),
            f'<code title="{_e(a.policy_id)}">{_e(a.policy_id[:19])}{"…" if len(a.policy_id) > 19 else ""}</code>',
            '<span class="yes">confirmed</span>' if a.confirmed else '<span class="no">NOT confirmed</span>',
        ]
        body.append(
            "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
            f'<tr class="evidence-row"><td></td><td colspan="{len(headers) - 1}">{_evidence_details(view)}</td></tr>'
        )
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return (
        "<h2>Sites: admission decisions</h2>"
        '<p class="muted">Each admission\'s evidence, as the offline re-run appraised it from the logged bytes: '
        "click to expand.</p>"
        f'<table id="admissions"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _rounds_section(result: Verification) -> str:
    """Rounds: participants, model digest, strategy, clipping, DP."""
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
    return "<h2>Rounds</h2>" + _table(
        ["entry", "time", "round", "participants", "model sha256", "strategy", "clip norm", "DP"], rows, "rounds"
    )


def _timeline_section(result: Verification) -> str:
    """Timeline: the first MAX_TIMELINE entries, and how many more there are."""
    shown = result.entries[:MAX_TIMELINE]
    text = "<h2>Timeline</h2>" + _table(
        ["entry", "time", "event", "summary"],
        ([str(e.index), _e(_time(e.time)), _e(e.kind), _e(summary(e.kind, e.fields))] for e in shown),
        "timeline",
    )
    if len(result.entries) > len(shown):
        text += (
            f'<p class="muted">… and {len(result.entries) - len(shown)} more entries '
            "(see <code>attestfl audit verify --json</code>).</p>"
        )
    return text


def render_report(result: Verification, *, policy_file: str | None = None, policy_text: str | None = None) -> str:
    """The report; ``policy_file``/``policy_text``: the auditor's policy the log was verified under."""
    parts = _overview(result, policy_file, policy_text)
    parts += [
        _aggregator_section(result),
        _configuration_section(result),
        _policy_section(result),
        _admissions_section(result),
        _rounds_section(result),
        render_intelligence(result.entries),  # auditor/intelligence_report.py
        _timeline_section(result),
    ]

    title = f"attestfl audit report — {_e(result.directory.name)}" + (" — SIMULATED" if result.simulated else "")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
        f'<body><h1>{title}</h1><p class="muted">Log <code>{_e(result.directory)}</code>, verified '
        f"{_e(datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%SZ'))} with attestfl.</p>{''.join(parts)}</body></html>\n"
    )
