"""``attestfl serve --dashboard 127.0.0.1:PORT``: a read-only live page of the federation.

Two GET routes on a plain HTTP server (a daemon thread): ``/`` one self-contained page (inline
CSS and script, no external assets; every value is inserted as text, never as HTML), and
``/state.json``, which the page polls every second: the open round, the completed rounds
(aggregation time, epsilon), the current model's per-site metrics led by the worst site and
the largest subgroup gap, the recent drift alerts, the quarantine count and the contributor
values *as released* by the task's policy (nothing the audit log does not already hold).

Like the metrics endpoint it is unauthenticated: it binds 127.0.0.1 when no host is given and
logs a warning when bound anywhere else. The static export for auditors is ``attestfl audit
report`` (the same sections, from the verified log).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aggregator.config import DEFAULT_METRICS_HOST
from protocol.config import parse_endpoint

LOG = logging.getLogger("attestfl.aggregator.dashboard")
MAIN_METRICS = ("accuracy", "auroc", "loss", "ece")


def dashboard_state(driver: Any) -> dict[str, Any]:
    """What the page shows, from the round driver (read under its lock)."""
    with driver._lock:
        surveillance = driver.surveillance
        completed = sorted((r for r in driver.history.values() if r.model_sha256 is not None), key=lambda r: r.round)
        evaluated = sorted((r for r in driver.history.values() if r.metrics), key=lambda r: r.round)
        latest = evaluated[-1] if evaluated else None
        state: dict[str, Any] = {
            "round": driver.round,
            "rounds_total": driver.config.rounds,
            "finished": driver.finished,
            "rounds": [
                {
                    "round": r.round,
                    "participants": len(r.participants),
                    "aggregation_seconds": r.aggregation_seconds,
                    "epsilon": r.epsilon,
                }
                for r in completed
            ],
            "evaluated_round": latest.round if latest else None,
            "risk": dict(surveillance.risk),
            "per_site": {
                site: {name: value for name, value in metrics.items() if name in MAIN_METRICS}
                for site, metrics in sorted((latest.metrics if latest else {}).items())
            },
            "alerts": list(surveillance.recent_alerts),
            "quarantined_updates": surveillance.quarantined,
            "contribution": surveillance.released,
            "epsilon": completed[-1].epsilon if completed else None,
        }
    return state


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>attestfl federation</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1f24;max-width:1100px}
h1{font-size:1.4rem}h2{font-size:1.05rem;margin-top:1.5rem}
table{border-collapse:collapse;width:100%;font-size:.85rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left}th{background:#f3f5f8}
.risk{padding:.8rem 1rem;border-radius:.4rem;background:#fff8c5;border:2px solid #bf8700;font-size:1.05rem}
.muted{color:#57606a}.alert{color:#cf222e;font-weight:600}
</style></head><body>
<h1>attestfl federation <span class="muted" id="status">connecting…</span></h1>
<div class="risk" id="risk">no evaluation yet</div>
<h2>Per-site metrics of the current model</h2><table id="sites"></table>
<h2>Drift alerts <span class="muted" id="quarantined"></span></h2><table id="alerts"></table>
<h2>Contributor value (as released)</h2><table id="contribution"></table>
<h2>Rounds</h2><table id="rounds"></table>
<script>
"use strict";
function fmt(v){
  if(typeof v==="number"){return Number.isInteger(v)?String(v):v.toFixed(4);}
  return v===null||v===undefined?"—":String(v);
}
function fill(id, head, rows){
  const t=document.getElementById(id); t.replaceChildren();
  const h=t.insertRow();
  for(const c of head){const th=document.createElement("th"); th.textContent=c; h.appendChild(th);}
  for(const r of rows){const tr=t.insertRow(); for(const c of r){tr.insertCell().textContent=fmt(c);}}
}
async function refresh(){
  try{
    const s=await (await fetch("state.json",{cache:"no-store"})).json();
    document.getElementById("status").textContent=
      s.finished?"training finished":`round ${s.round} of ${s.rounds_total}`;
    const r=s.risk||{};
    const gap=r.largest_subgroup_gap;
    document.getElementById("risk").textContent=r.worst_site
      ?`Worst site: ${r.worst_site} (accuracy ${fmt(r.worst_accuracy)}, model of round ${s.evaluated_round})`+
       (gap?` · largest subgroup gap ${fmt(gap.gap)} at ${gap.site} (${gap.attribute})`:"")
      :"no evaluation yet";
    const metrics=["accuracy","auroc","loss","ece"];
    fill("sites",["site",...metrics],Object.entries(s.per_site).map(([site,m])=>[site,...metrics.map(k=>m[k])]));
    fill("alerts",["round","site","rule","value","threshold","quarantined"],
      s.alerts.map(a=>[a.round,a.site,a.rule,a.value,a.threshold,a.quarantined?"yes":"no"]));
    document.getElementById("quarantined").textContent=`(${s.quarantined_updates} update(s) quarantined)`;
    const c=s.contribution;
    fill("contribution",["site","value"],c?c.ranking.map(site=>[site,c.values[site]]):[]);
    fill("rounds",["round","participants","aggregation s","epsilon"],
      s.rounds.map(x=>[x.round,x.participants,x.aggregation_seconds,x.epsilon]));
  }catch(e){document.getElementById("status").textContent="(aggregator unreachable)";}
}
refresh(); setInterval(refresh,1000);
</script></body></html>
"""


def _handler(driver: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            if self.path in ("/", "/index.html"):
                body, kind = PAGE.encode(), "text/html; charset=utf-8"
            elif self.path == "/state.json":
                body, kind = json.dumps(dashboard_state(driver), default=str).encode(), "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header(
                "Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
            )
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the aggregator's JSON log says what matters

    return Handler


def start_dashboard(listen: str, driver: Any) -> ThreadingHTTPServer:
    """Serve the page on ``listen`` (host:port; no host: 127.0.0.1) from a daemon thread;
    ``shutdown()`` stops it. ``server.server_port`` is the bound port."""
    endpoint = parse_endpoint(listen, default_host=DEFAULT_METRICS_HOST)
    if not endpoint.is_loopback:
        LOG.warning(
            "dashboard exposed",
            extra={
                "fields": {
                    "dashboard": str(endpoint),
                    "reason": "the dashboard is unauthenticated: bind it to "
                    "127.0.0.1 and reach it through a tunnel or an authenticating proxy",
                }
            },
        )
    server = ThreadingHTTPServer((endpoint.host, endpoint.port), _handler(driver))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="attestfl-dashboard", daemon=True).start()
    return server


__all__ = ["PAGE", "dashboard_state", "start_dashboard"]
