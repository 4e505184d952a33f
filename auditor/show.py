"""``attestfl audit show``: the log's entries decoded for a person, nobody needing to read CBOR.

Each entry becomes a plain map (:func:`entry_view`): text and numbers as logged, short byte
strings as hex, long ones (evidence, collateral) as their SHA-256 and length. An admission
(:func:`admission_view`) also gets the site evidence behind it: platform, measurement, TCB,
chip id (SEV-SNP) or PPID and FMSPC (TDX), debug, simulated, the evidence's digest, the
identity key and its fingerprint, the session keys, and the admission policy in force (the
attestation policy file's text and the site's rule, from the run's ``config`` entry). The
claims are those the offline re-run of :func:`auditor.verify.verify_log` appraised from the
logged evidence, not the ones the aggregator wrote beside it.

Every value comes from the log, which the operator stored: read it together with the verdict
(:mod:`auditor.verdict`) that ``audit show`` prints first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from auditor.verify import AdmissionDecision, AggregatorRun, Entry, Verification

#: Byte strings up to this length are shown as hex; longer ones as their digest and length.
MAX_HEX_BYTES = 64
MAX_TEXT = 4000


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def plain(value: Any, depth: int = 0) -> Any:
    """A logged value as JSON-able data (bytes as hex, or digest and length when long)."""
    if depth > 12:
        return "…"
    if isinstance(value, bytes):
        if len(value) <= MAX_HEX_BYTES:
            return value.hex()
        return {"sha256": hashlib.sha256(value).hexdigest(), "bytes": len(value)}
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:MAX_TEXT]


def _text_of(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")[:MAX_TEXT]
        except UnicodeDecodeError:
            return None
    return None


def _map(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def summary(kind: str, fields: dict[str, Any]) -> str:
    """One line saying what an entry records."""
    if kind == "admission":
        return f"site {fields.get('site')}: {'admitted' if fields.get('admitted') else 'refused'}"
    if kind in ("update_accepted", "metrics"):
        extra = ""
        if kind == "metrics":
            extra = ": " + ", ".join(f"{k}={_number(v)}" for k, v in _map(fields.get("metrics")).items())
        return f"site {fields.get('site')}, round {fields.get('round')}{extra}"
    if kind == "round":
        participants = len(_map(fields.get("participants")))
        epsilon = fields.get("epsilon")
        return (
            f"round {fields.get('round')}: {participants} participant(s), produced round "
            f"{_next(fields.get('round'))}'s model {str(fields.get('model_sha256'))[:16]}…"
            + (f", ε={_number(epsilon)}" if isinstance(epsilon, (int, float)) else "")
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


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tcb_of(claims: dict[str, Any]) -> str | None:
    """The TCB a platform's claims report, as one line (SEV-SNP: reported TCB; TDX: TEE TCB SVN)."""
    tcb = claims.get("reported_tcb") or claims.get("tee_tcb_svn")
    if isinstance(tcb, dict):
        return " ".join(f"{k}={v}" for k, v in tcb.items())
    return None if tcb is None else str(tcb)


def _ppid(evidence: bytes) -> str | None:
    """The PPID in the PCK certificate of a TDX quote inside an evidence bundle (None when there is none)."""
    try:
        from attestation.bundle_abi import parse_bundle
        from attestation.platforms.tdx.abi import parse_quote
        from attestation.platforms.tdx.verify import pck_chain_of

        bundle = parse_bundle(evidence)
        if bundle.platform != "tdx":
            return None
        chain, _ = pck_chain_of(parse_quote(bundle.evidence))
    except Exception:  # noqa: BLE001 - evidence of any shape: no PPID shown (the verdict says what is wrong)
        return None
    return chain.extensions.ppid.hex() if chain is not None and chain.extensions is not None else None


def _bundle_facts(evidence: bytes) -> dict[str, Any]:
    try:
        from attestation.bundle_abi import parse_bundle

        bundle = parse_bundle(evidence)
    except Exception:  # noqa: BLE001 - not a bundle (App Attest, or malformed: the verdict says so)
        return {}
    return {
        "platform": bundle.platform,
        "created": bundle.created.isoformat(),
        "nonce": bundle.nonce.hex(),
        "gpu": bundle.gpu is not None,
        "certificates": len(bundle.certificates),
    }


def _fingerprint(public: Any) -> str | None:
    if not isinstance(public, bytes) or not public:
        return None
    digest = hashlib.sha256(public).hexdigest()
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))  # as `attestfl site enroll` prints it


def policy_view(config: Entry | None, site: str | None = None) -> dict[str, Any] | None:
    """The admission policy a ``config`` entry puts in force: its id, the attestation policy
    file's text, and the rule of ``site`` (every rule when None)."""
    if config is None:
        return None
    admission = _map(config.fields.get("admission"))
    attestation = admission.get("attestation_policy")
    sites = _map(admission.get("sites"))
    view: dict[str, Any] = {
        "policy_id": admission.get("policy_id"),
        "config_entry": config.index,
        "attestation_policy": _text_of(attestation)
        if attestation is not None
        else "(none: the default policy, real vendor roots only)",
        "challenge_ttl_s": admission.get("challenge_ttl_s"),
        "credential_ttl_s": admission.get("credential_ttl_s"),
        "extension_checks": plain(admission.get("extension_checks", [])),
    }
    if site is None:
        view["sites"] = plain(sites)
    else:
        view["site_rule"] = plain(sites.get(site)) if site in sites else None
    result: dict[str, Any] = plain(view)
    return result


def admission_view(entry: Entry, decision: AdmissionDecision | None, config: Entry | None) -> dict[str, Any]:
    """An admission entry with the site evidence behind it and the policy in force."""
    f = entry.fields
    claims = decision.claims if decision is not None and decision.claims else _map(f.get("claims"))
    evidence = f.get("evidence")
    bundle = _bundle_facts(evidence) if isinstance(evidence, bytes) else {}
    site = f.get("site") if isinstance(f.get("site"), str) else None
    identity = f.get("identity_public")
    view: dict[str, Any] = {
        "index": entry.index,
        "time": _time(entry.time),
        "kind": "admission",
        "site": site,
        "admitted": f.get("admitted"),
        "reasons": plain(f.get("reasons", [])),
        "rerun": None if decision is None else ("confirmed" if decision.confirmed else "NOT confirmed"),
        "claims_from": "offline re-run" if decision is not None and decision.claims else "the log (not re-run)",
        "evidence": {
            "format": f.get("evidence_format"),
            "sha256": f.get("evidence_sha256"),
            "bytes": len(evidence) if isinstance(evidence, bytes) else None,
            "platform": claims.get("platform") or f.get("platform"),
            "simulated": claims.get("simulated"),
            "debug": claims.get("debug"),
            "measurement": claims.get("measurement"),
            "tcb": tcb_of(claims),
            "tcb_status": claims.get("tcb_status"),
            "chip_id": claims.get("chip_id"),
            "ppid": _ppid(evidence) if isinstance(evidence, bytes) else None,
            "fmspc": claims.get("fmspc"),
            "bundle": bundle or None,
            "claims": plain(claims),
        },
        "identity_key": {"public": plain(identity), "fingerprint": _fingerprint(identity)},
        "session_keys": {"x25519": plain(f.get("x25519")), "ed25519": plain(f.get("ed25519"))},
        "challenge": plain(f.get("challenge")),
        "appraised_at": f.get("at"),
        "aggregator_keys": {"x25519": plain(f.get("aggregator_x25519")), "ed25519": plain(f.get("aggregator_ed25519"))},
        "policy": policy_view(config, site) if config is not None else {"policy_id": f.get("policy_id")},
    }
    if site is None or "evidence" not in f:
        view["note"] = "refused before the peer proved the site's identity key: no evidence is logged"
    result: dict[str, Any] = plain(view)  # what the operator logged may be of any CBOR type
    return result


def run_view(run: AggregatorRun) -> dict[str, Any]:
    """The aggregator's evidence of a start or handover, as appraised under the auditor's policy."""
    claims = run.claims if isinstance(run.claims, dict) else {}
    return {
        "platform": run.platform,
        "simulated": claims.get("simulated"),
        "debug": claims.get("debug"),
        "measurement": claims.get("measurement"),
        "tcb": tcb_of(claims),
        "tcb_status": claims.get("tcb_status"),
        "chip_id": claims.get("chip_id"),
        "log_key": run.key,
        "auditor_policy": "accepted" if not run.reasons else ("not trusted" if run.not_trusted else "rejected"),
        "reasons": list(run.not_trusted or run.reasons),
    }


def entry_view(entry: Entry, run: AggregatorRun | None = None) -> dict[str, Any]:
    """Any entry, decoded (``run``: a start or handover's appraisal)."""
    fields = dict(entry.fields)
    view: dict[str, Any] = {
        "index": entry.index,
        "time": _time(entry.time),
        "kind": entry.kind,
        "summary": summary(entry.kind, fields),
    }
    if entry.kind == "config":
        toml = _text_of(fields.pop("aggregator_toml", None))
        if toml is not None:
            view["aggregator_toml"] = toml
        fields.pop("admission", None)
        view["policy"] = policy_view(entry)
    if run is not None:
        view["aggregator_evidence"] = run_view(run)
    view["fields"] = fields
    result: dict[str, Any] = plain(view)
    return result


def views(result: Verification, kinds: frozenset[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every entry of the verified log (of ``kinds`` only, when given), decoded."""
    decisions = {a.index: a for a in result.admissions}
    runs = {r.index: r for r in result.runs}
    config: Entry | None = None
    for entry in result.entries:
        if entry.kind == "config":
            config = entry
        elif entry.kind in ("aggregator_start", "handover"):
            config = None  # each run logs its own config
        if kinds is not None and entry.kind not in kinds:
            continue
        if entry.kind == "admission":
            in_force = config
            if in_force is not None and _map(in_force.fields.get("admission")).get("policy_id") != entry.fields.get(
                "policy_id"
            ):
                in_force = None  # the entry names a policy this run did not log: verify reports it
            yield admission_view(entry, decisions.get(entry.index), in_force)
        else:
            yield entry_view(entry, runs.get(entry.index))


def rule_text(rule: Any) -> str:
    """A logged site rule as one line: only what it sets."""
    if not isinstance(rule, dict):
        return "none (the site is not in the policy)"
    parts = []
    for key, value in rule.items():
        if value in (None, [], {}, ""):
            continue
        shown = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
        parts.append(f"{key}={shown}")
    return "; ".join(parts) or "empty"


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def _config_lines(view: dict[str, Any], shown_policies: set[str]) -> list[str]:
    """A config entry: the aggregator.toml, the admission policy's attestation policy file, the site rules."""
    lines = []
    policy = view.get("policy") or {}
    policy_id = str(policy.get("policy_id"))
    if "aggregator_toml" in view:
        lines.append("    aggregator.toml:")
        lines.append(_indent(str(view["aggregator_toml"]), "      | "))
    lines.append(f"    admission policy  {policy_id}, attestation policy file:")
    lines.append(_indent(str(policy.get("attestation_policy") or ""), "      | "))
    shown_policies.add(policy_id)
    sites = policy.get("sites")
    for site, rule in sites.items() if isinstance(sites, dict) else []:
        lines.append(f"    site rule         {site}: {rule_text(rule)}")
    return lines


def _aggregator_evidence_lines(run: dict[str, Any]) -> list[str]:
    """A start or handover: the aggregator's evidence and the auditor's policy's verdict on it."""
    lines = []
    simulated = " (SIMULATED: proves nothing about hardware)" if run.get("simulated") else ""
    platform = f"{run.get('platform')}" + simulated
    lines.append(f"    platform          {platform}")
    lines.append(f"    measurement       {run.get('measurement')}")
    if run.get("tcb"):
        lines.append(f"    TCB               {run.get('tcb')}")
    if run.get("chip_id"):
        lines.append(f"    chip id           {run.get('chip_id')}")
    why = "; ".join(map(str, run.get("reasons") or []))
    lines.append(f"    your policy       {run.get('auditor_policy')}" + (f": {why}" if why else ""))
    return lines


def _round_lines(fields: dict[str, Any]) -> list[str]:
    """A round: the model, strategy, DP and each participant's update."""
    lines = []
    produced = f"{fields.get('model_sha256')} (round {_next(fields.get('round'))}'s model)"
    lines.append(f"    produced model    {produced}")
    lines.append(f"    strategy          {fields.get('strategy')}, clip norm {fields.get('clip_norm')}")
    if fields.get("dp"):
        lines.append(f"    DP                {fields.get('dp')}, ε after this round {fields.get('epsilon')}")
    participants = fields.get("participants")
    for site, part in participants.items() if isinstance(participants, dict) else []:
        part = part if isinstance(part, dict) else {}
        lines.append(f"    participant       {site}: weight {part.get('weight')}, update {part.get('update_sha256')}")
    return lines


def _entry_text(view: dict[str, Any], head: str, shown_policies: set[str]) -> str:
    """Any entry but an admission: its summary, and the details of a config, start, round or metrics entry."""
    lines = [f"{head}  {view['summary']}"]
    if view["kind"] == "config":
        lines += _config_lines(view, shown_policies)
    elif "aggregator_evidence" in view:
        lines += _aggregator_evidence_lines(view["aggregator_evidence"])
    elif view["kind"] == "round":
        lines += _round_lines(view.get("fields") or {})
    elif view["kind"] == "metrics":
        number = (view.get("fields") or {}).get("round")
        if isinstance(number, int):
            model = "the initial model" if number == 1 else f"the model round {number - 1} produced"
            lines[0] += f" (evaluates {model})"
    return "\n".join(lines)


def _row(lines: list[str], name: str, value: Any) -> None:
    """A labelled line, left out when there is no value."""
    if value is not None and value != "":
        lines.append(f"    {name:<17} {value}")


def _evidence_lines(view: dict[str, Any]) -> list[str]:
    """An admission's evidence as the offline re-run appraised it, its keys and its reasons."""
    lines: list[str] = []
    e = view["evidence"]
    platform = e["platform"]
    if e["simulated"]:
        platform = f"{platform} (SIMULATED: proves nothing about hardware)"
    _row(lines, "platform", platform)
    _row(lines, "measurement", e["measurement"])
    _row(lines, "TCB", e["tcb"] and f"{e['tcb']} (status: {e['tcb_status'] or 'not appraised: no collateral'})")
    _row(lines, "chip id", e["chip_id"])
    _row(lines, "PPID", e["ppid"])
    _row(lines, "FMSPC", e["fmspc"])
    _row(lines, "debug", None if e["debug"] is None else ("yes" if e["debug"] else "no"))
    if e["sha256"]:
        _row(lines, "evidence", f"{e['format']}, {e['bytes'] or '?'} bytes, sha256 {e['sha256']}")
    key = view["identity_key"]
    if key["public"]:
        _row(lines, "identity key", f"{key['public']} (fingerprint {key['fingerprint']})")
    sessions = view["session_keys"]
    if sessions["x25519"] or sessions["ed25519"]:
        _row(lines, "session keys", f"x25519 {sessions['x25519']}, ed25519 {sessions['ed25519']}")
    _row(lines, "appraised at", view["appraised_at"])
    reasons = view["reasons"] if isinstance(view["reasons"], list) else [view["reasons"]]
    _row(lines, "reasons", "; ".join(map(str, reasons)) if reasons else "none")
    _row(lines, "note", view.get("note"))
    return lines


def _admission_policy_lines(view: dict[str, Any], shown_policies: set[str]) -> list[str]:
    """The admission policy in force: the site's rule, and the policy's text unless already shown."""
    lines: list[str] = []
    policy = view.get("policy") or {}
    admission_policy_id = str(policy.get("policy_id"))
    if "attestation_policy" in policy:
        _row(lines, "site rule", rule_text(policy.get("site_rule")))
        if admission_policy_id in shown_policies:
            _row(lines, "policy", f"{admission_policy_id} (text shown above)")
        else:
            shown_policies.add(admission_policy_id)
            _row(
                lines,
                "policy",
                f"{admission_policy_id} (config entry {policy.get('config_entry')}), attestation policy file:",
            )
            lines.append(_indent(policy.get("attestation_policy") or "", "      | "))
    else:
        _row(lines, "policy", f"{admission_policy_id} (no config entry of this run holds it)")
    return lines


def render_text(view: dict[str, Any], shown_policies: set[str]) -> str:
    """A view as lines for a person; a policy's text is printed once (``shown_policies``)."""
    head = f"entry {view['index']:>5}  {view['time']}  {view['kind']}"
    if view["kind"] != "admission":
        return _entry_text(view, head, shown_policies)
    verdict = "ADMITTED" if view["admitted"] else "REFUSED"
    rerun = f" (offline re-run: {view['rerun']})" if view["rerun"] else ""
    lines = [f"{head}  site {view['site']}: {verdict}{rerun}"]
    lines += _evidence_lines(view)
    lines += _admission_policy_lines(view, shown_policies)
    return "\n".join(lines)


__all__ = [
    "admission_view",
    "entry_view",
    "plain",
    "policy_view",
    "render_text",
    "rule_text",
    "run_view",
    "summary",
    "tcb_of",
    "views",
]


def _next(number: object) -> object:
    """The round whose model a ``round`` entry produced (round r's training makes round r + 1's model)."""
    return number + 1 if type(number) is int else "?"
