"""The comparative report of vendor evaluation jobs: per vendor, per-site and pooled metrics,
the worst site and bootstrap confidence intervals, as JSON and as HTML with charts.

Pooled metrics are the example-weighted means of the released sites' metrics; their 95 %
intervals come from a stratified bootstrap (replicate *i* of the pool is the weighted mean of
each site's replicate *i*, each site resampled on its own data inside its enclave). A site
below the policy's ``min_examples`` is listed as suppressed, without values.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

from protocol.vendor import VENDOR_METRICS, percentile_interval

#: For these metrics a larger value is better (the worst site is the lowest); for the others the highest.
HIGHER_IS_BETTER = ("accuracy", "auroc")


def _released(name: str, allowed: tuple[str, ...]) -> bool:
    return name.split("[", 1)[0] in allowed


def job_row(job: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]], *, allowed: tuple[str, ...]) -> dict:
    """One vendor's row: ``results`` maps a site to {examples, metrics, replicates} or {suppressed}."""
    sites: dict[str, Any] = {}
    weights: dict[str, int] = {}
    for site, result in sorted(results.items()):
        if "suppressed" in result:
            sites[site] = {"suppressed": result["suppressed"]}
            continue
        metrics = {k: v for k, v in sorted(result["metrics"].items()) if _released(k, allowed)}
        ci = {}
        for name, values in sorted(result.get("replicates", {}).items()):
            interval = percentile_interval(list(values)) if name in allowed else None
            if interval is not None:
                ci[name] = [interval[0], interval[1]]
        sites[site] = {"examples": int(result["examples"]), "metrics": metrics, "ci": ci}
        weights[site] = int(result["examples"])
    pooled: dict[str, Any] = {"examples": sum(weights.values()), "sites": len(weights), "metrics": {}, "ci": {}}
    worst: dict[str, Any] = {}
    for name in (m for m in VENDOR_METRICS if m in allowed):
        values = {s: sites[s]["metrics"][name] for s in weights if name in sites[s]["metrics"]}
        total = sum(weights[s] for s in values)
        if not values or total <= 0:
            continue
        pooled["metrics"][name] = sum(weights[s] * v for s, v in values.items()) / total
        pick = min if name in HIGHER_IS_BETTER else max
        site = pick(values, key=lambda s: values[s])
        worst[name] = {"site": site, "value": values[site]}
        series = [list(results[s].get("replicates", {}).get(name, [])) for s in values]
        count = min((len(v) for v in series), default=0)
        if count:
            replicates = []
            for i in range(count):
                replicate = sum(weights[s] * series[j][i] for j, s in enumerate(values)) / total
                replicates.append(replicate)
            interval = percentile_interval(replicates)
            if interval is not None:
                pooled["ci"][name] = [interval[0], interval[1]]
    return {
        "vendor": job["vendor"],
        "model": job["model"],
        "job": job["job"],
        "model_sha256": job["model_sha256"],
        "sites": sites,
        "pooled": pooled,
        "worst_site": worst,
    }


def vendor_view(row: Mapping[str, Any], *, allowed: tuple[str, ...], per_site: bool) -> dict[str, Any]:
    """What a vendor receives of its own row: the metrics the policy releases to vendors, pooled
    (and per site when ``vendor_per_site``)."""
    pooled = row["pooled"]
    view: dict[str, Any] = {
        "vendor": row["vendor"],
        "model": row["model"],
        "job": row["job"],
        "model_sha256": row["model_sha256"],
        "pooled": {
            "examples": pooled["examples"],
            "sites": pooled["sites"],
            "metrics": {k: v for k, v in pooled["metrics"].items() if k in allowed},
            "ci": {k: v for k, v in pooled["ci"].items() if k in allowed},
        },
    }
    if per_site:
        view["sites"] = {
            site: (
                value
                if "suppressed" in value
                else {
                    "examples": value["examples"],
                    "metrics": {k: v for k, v in value["metrics"].items() if _released(k, allowed)},
                    "ci": {k: v for k, v in value["ci"].items() if k in allowed},
                }
            )
            for site, value in row["sites"].items()
        }
        view["worst_site"] = {k: v for k, v in row["worst_site"].items() if k in allowed}
    return view


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else "-"


def table_text(report: Mapping[str, Any], metrics: tuple[str, ...] = ("accuracy", "auroc", "loss", "ece")) -> str:
    """The comparative table as plain text (one line per vendor and site, then pooled)."""
    lines = [f"{'vendor':<12} {'site':<14} {'n':>5} " + " ".join(f"{m:>22}" for m in metrics)]
    for row in report.get("vendors", []):
        for site, value in row["sites"].items():
            if "suppressed" in value:
                lines.append(f"{row['vendor']:<12} {site:<14} {'':>5} suppressed: {value['suppressed']}")
                continue
            cells = []
            for m in metrics:
                ci = value["ci"].get(m)
                cell = _fmt(value["metrics"].get(m)) + (f" [{ci[0]:.3f},{ci[1]:.3f}]" if ci else "")
                cells.append(f"{cell:>22}")
            lines.append(f"{row['vendor']:<12} {site:<14} {value['examples']:>5} " + " ".join(cells))
        pooled = row["pooled"]
        cells = []
        for m in metrics:
            ci = pooled["ci"].get(m)
            cell = _fmt(pooled["metrics"].get(m)) + (f" [{ci[0]:.3f},{ci[1]:.3f}]" if ci else "")
            cells.append(f"{cell:>22}")
        lines.append(f"{row['vendor']:<12} {'POOLED':<14} {pooled['examples']:>5} " + " ".join(cells))
        worst = row["worst_site"].get("auroc") or row["worst_site"].get("accuracy")
        if worst:
            lines.append(f"{'':<12} worst site: {worst['site']} ({_fmt(worst['value'])})")
        if row.get("missing"):
            lines.append(f"{'':<12} not reported by the deadline: {', '.join(row['missing'])}")
    return "\n".join(lines)


def _bars(row: Mapping[str, Any], metric: str) -> str:
    """An inline SVG bar chart of one metric per site and pooled, with the 95 % interval."""
    items = []
    for site, value in row["sites"].items():
        if "suppressed" not in value and metric in value["metrics"]:
            items.append((site, value["metrics"][metric], value["ci"].get(metric)))
    if metric in row["pooled"]["metrics"]:
        items.append(("pooled", row["pooled"]["metrics"][metric], row["pooled"]["ci"].get(metric)))
    if not items:
        return ""
    top = max(1.0, max(v for _s, v, _c in items), max((c[1] for _s, _v, c in items if c), default=0.0))
    width, bar, gap, height = 320, 18, 8, 24 + len(items) * 26
    parts = [f'<svg width="{width + 140}" height="{height}" role="img" aria-label="{html.escape(metric)}">']
    for i, (site, value, ci) in enumerate(items):
        y = 12 + i * (bar + gap)
        parts.append(f'<text x="0" y="{y + 13}" font-size="12">{html.escape(site)}</text>')
        colour = "#555" if site == "pooled" else "#4a78b0"
        parts.append(f'<rect x="120" y="{y}" width="{width * value / top:.1f}" height="{bar}" fill="{colour}"/>')
        if ci:
            x0, x1 = 120 + width * ci[0] / top, 120 + width * ci[1] / top
            mid = y + bar / 2
            parts.append(f'<line x1="{x0:.1f}" y1="{mid}" x2="{x1:.1f}" y2="{mid}" stroke="#000"/>')
        parts.append(f'<text x="{125 + width * value / top:.1f}" y="{y + 13}" font-size="11">{value:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    """The network's comparative report as one self-contained HTML page (inline SVG charts)."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>attestfl vendor evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}</style></head><body>",
        "<h1>Vendor model evaluation</h1>",
        f"<p>Generated {html.escape(str(report.get('generated', '')))}; minimum examples per site "
        f"{html.escape(str(report.get('min_examples', '')))}; 95 % bootstrap intervals.</p>",
    ]
    metrics = tuple(report.get("metrics", VENDOR_METRICS))
    for row in report.get("vendors", []):
        out.append(f"<h2>{html.escape(row['vendor'])} / {html.escape(row['model'])}</h2>")
        out.append(f"<p>model sha256 <code>{html.escape(row['model_sha256'])}</code></p>")
        out.append("<table><tr><th>site</th><th>n</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in metrics))
        for site, value in [*row["sites"].items(), ("pooled", row["pooled"])]:
            if "suppressed" in value:
                out.append(
                    f"<tr><td>{html.escape(site)}</td><td colspan='{len(metrics) + 1}'>suppressed: "
                    f"{html.escape(value['suppressed'])}</td></tr>"
                )
                continue
            cells = []
            for m in metrics:
                ci = value["ci"].get(m)
                cells.append(
                    f"<td>{_fmt(value['metrics'].get(m))}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + "</td>"
                )
            out.append(f"<tr><td>{html.escape(site)}</td><td>{value['examples']}</td>{''.join(cells)}</tr>")
        out.append("</table>")
        if row.get("missing"):
            out.append(
                "<p>Closed at the report deadline; not reported: "
                + ", ".join(html.escape(str(site)) for site in row["missing"])
                + "</p>"
            )
        worst = row["worst_site"]
        if worst:
            out.append(
                "<p>Worst site: "
                + ", ".join(f"{html.escape(m)} {html.escape(w['site'])} ({_fmt(w['value'])})" for m, w in worst.items())
                + "</p>"
            )
        for m in ("accuracy", "auroc"):
            if m in metrics:
                out.append(f"<h3>{m}</h3>" + _bars(row, m))
    out.append("</body></html>")
    return "\n".join(out)
