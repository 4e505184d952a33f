"""``attestfl config ...``: check a configuration file, print the configuration reference, and
the two edits the scaffolded journey needs (admit a site, pin the aggregator's measurement).

* ``attestfl config check FILE [--kind K]``: read FILE with the reader its party uses (the
  aggregator's, a site's, a ``[task]`` table, an admission policy, an attestation policy); the
  kind comes from its tables unless ``--kind`` says. Exit 0: usable; 2: the one-line error,
  which names the file, the key and what is allowed.
* ``attestfl config reference``: ``docs/configuration.md``, generated here from what the readers
  declare: the msgspec Structs (types, bounds, defaults), the key lists, and the key comments of
  the readers' module docstrings. ``tests/test_config_reference.py`` fails when the committed
  page drifts from :func:`render_reference`.
* ``attestfl config add-site aggregator.toml --enrolment enrolment.json`` appends the site's
  ``[admission.sites.<id>]`` rule pinning its identity key.
* ``attestfl config pin site.toml --measurement HEX`` pins the aggregator's measurement in the
  site's aggregator policy.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import msgspec
import msgspec.inspect as schema_info

from attestation.errors import EXIT_OK, EXIT_UNUSABLE, AttestflError, PolicyError
from attestation.files import write_atomically
from protocol.config import ConfigError, describe, load_toml, value_repr

KINDS = ("aggregator", "site", "task", "admission", "policy")


class ConfigToolError(AttestflError, ValueError):
    exit_code = EXIT_UNUSABLE


# ---- config check ------------------------------------------------------------------------------------


def detect_kind(data: dict[str, Any]) -> str:
    """The kind of a parsed file, from its tables."""
    if "aggregator" in data or {"admission", "task"} <= set(data):
        return "aggregator"
    if "site" in data:
        return "site"
    if "task" in data:
        return "task"
    if "admission" in data:
        return "admission"
    return "policy"


def check_file(path: Path, kind: str | None = None) -> tuple[str, str]:
    """Load ``path`` as its party would; (kind, a one-line summary). :class:`ConfigError` names
    the file, the key and what is allowed."""
    data, _raw = load_toml(path)
    kind = kind or detect_kind(data)
    base = path.resolve().parent
    try:
        if kind == "aggregator":
            from aggregator.config import AggregatorConfig

            aggregator = AggregatorConfig.load(path)
            leaf = ""
            if aggregator.parent is not None:  # a leaf: its [parent] and its [task] as a tree takes it
                from attestfl.hierarchy import read_parent

                parent = read_parent(aggregator)
                leaf = f", leaf {parent.site_id} of {parent.aggregator}"
            return kind, (
                f"listen {aggregator.listen}, tee {aggregator.tee}, {len(aggregator.admission.sites)} site rule(s), "
                f"{aggregator.task.rounds} round(s) of {aggregator.task.strategy.name}, "
                f"model of {aggregator.task.spec.parameter_count} parameters{leaf}"
            )
        if kind == "site":
            from fedsite.config import SiteConfig

            site = SiteConfig.load(path)
            return kind, f"site {site.site_id}, aggregator {site.aggregator}, tee {site.tee}"
        if kind == "task":
            from aggregator.rounds import TaskConfig

            unknown = sorted(set(data) - {"task"})
            if unknown:
                raise ConfigError(f"unknown table(s) {', '.join(unknown)}; allowed: [task]")
            task = TaskConfig.from_table(data.get("task", {}), base)
            parameters = task.spec.parameter_count
            return kind, f"{task.rounds} round(s) of {task.strategy.name}, model of {parameters} parameters"
        if kind == "admission":
            from protocol.admission import AdmissionPolicy

            unknown = sorted(set(data) - {"admission"})
            if unknown:
                raise ConfigError(f"unknown table(s) {', '.join(unknown)}; allowed: [admission]")
            admission = AdmissionPolicy.from_table(data.get("admission", {}), base)
            return kind, f"{len(admission.sites)} site rule(s): {', '.join(sorted(admission.sites)) or 'none'}"
        if kind == "policy":
            from attestation.policy import Policy

            policy = Policy.load(path)
            return kind, f"platforms {', '.join(sorted(policy.platforms))}"
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(str(path.resolve())) else f"{path}: {text}") from None
    except (PolicyError, ValueError) as exc:
        text = str(exc)
        raise ConfigError(text if str(path.resolve()) in text or str(path) in text else f"{path}: {text}") from None
    raise ConfigToolError(f"--kind: expected one of {', '.join(KINDS)}, got {kind!r}")


def run_check(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    path = Path(args.file)
    kind, summary = check_file(path, args.kind)
    print(f"{path}: OK ({kind}): {summary}", file=out)
    return EXIT_OK


# ---- the reference -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyDoc:
    name: str
    allowed: str
    default: str
    description: str


@dataclass(frozen=True)
class TableDoc:
    file: str
    table: str
    keys: tuple[KeyDoc, ...]
    note: str = ""


_KEY_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*(?:#\s?(.*))?$")
_TABLE_LINE = re.compile(r"^\s*\[([^\]]+)\]\s*(?:(?:->|#).*)?$")
_MORE = re.compile(r"^\s{8,}#\s?(.*)$")


def docstring_keys(doc: str, table: str) -> dict[str, tuple[str, str]]:
    """key -> (example value, comment) of ``table`` in the TOML examples of a module docstring
    (``key = value  # comment``, a comment continued on the next lines' ``#``)."""
    keys: dict[str, tuple[str, str]] = {}
    current, last = None, None
    for line in doc.splitlines():
        header = _TABLE_LINE.match(line)
        if header and "=" not in line.split("]")[0]:
            current, last = header.group(1).strip(), None
            continue
        if current != table:
            continue
        more = _MORE.match(line)
        if more and last is not None and "=" not in line.split("#")[0]:
            value, comment = keys[last]
            keys[last] = (value, f"{comment} {more.group(1).strip()}".strip())
            continue
        match = _KEY_LINE.match(line)
        if match and match.group(1) not in keys:
            last = match.group(1)
            keys[last] = (match.group(2).strip(), (match.group(3) or "").strip())
    return keys


#: What a key is for, where its reader's docstring does not say: (table, key) -> text.
MORE = {
    ("site", "id"): "this site's id: the operator admits it by this name",
    ("site", "aggregator"): "the aggregator's host:port (IPv6 in brackets)",
    ("site", "simulated_dir"): "the simulated TEE's directory (simulated-* only)",
    ("site", "simulated_measurement"): "simulated TEE only: launch with this measurement (48 bytes hex; refusal demos)",
    ("admission", "sites"): "the site rules: one [admission.sites.<id>] table each",
    ("admission.sites.<id>", "app_id"): "App Attest: TEAMID.bundle.id of the app",
    ("admission.sites.<id>", "production"): "App Attest: production (true) or development environment",
    ("admission.sites.<id>", "checks"): 'parameters of installed admission checks: a checks."<check id>" table each',
    ("task", "rounds"): "training rounds",
    ("task", "round_deadline"): "a round closes at its deadline with the quorum, or is retried",
    ("task", "strategy"): "the aggregation rule: a name, or the [task.strategy] table",
    ("task", "trimmed_mean_beta"): "deprecated: [task.strategy] beta",
    ("task", "krum_f"): "deprecated: [task.strategy] f",
    ("task", "krum_m"): "deprecated: [task.strategy] m",
    ("task", "dp"): "optional central differential privacy: the [task.dp] table",
    ("task", "drift"): "optional drift surveillance, alerts and quarantine: [task.drift] (docs/intelligence.md)",
    ("task", "contribution"): "optional contributor value and its release: the [task.contribution] table",
    ("task", "cards"): "optional dataset cards the sites publish, with the schema they must match: [task.cards]",
    ("task", "vendors"): "optional vendor evaluation jobs: the [task.vendors] table (docs/vendor-evaluation.md)",
    ("task", "adapters"): "optional: federate only these tensors on a pinned frozen base: the [task.adapters] table",
    ("task.strategy", "name"): "the strategy",
    ("task.dp", "clip_norm"): "each update is clipped to this L2 norm",
    ("task.dp", "noise_multiplier"): "Gaussian noise standard deviation over clip_norm",
    ("task.dp", "delta"): "the δ of the (ε, δ) accounting",
}


def _more(tables: list[TableDoc]) -> list[TableDoc]:
    return [
        replace(
            table,
            keys=tuple(
                replace(key, description=key.description or MORE.get((table.table, key.name), "")) for key in table.keys
            ),
        )
        for table in tables
    ]


def _struct_keys(schema: type[msgspec.Struct], comments: dict[str, tuple[str, str]]) -> tuple[KeyDoc, ...]:
    info = schema_info.type_info(schema)
    assert isinstance(info, schema_info.StructType)
    keys = []
    for field in info.fields:
        if field.required:
            default = "required"
        elif field.default is schema_info.NODEFAULT or field.default is None:
            default = "none"
        else:
            default = value_repr(field.default)
        comment = comments.get(field.encode_name, ("", ""))[1]
        keys.append(KeyDoc(field.encode_name, describe(field.type), default, comment))
    return tuple(keys)


def _listed_keys(names: tuple[str, ...], comments: dict[str, tuple[str, str]]) -> tuple[KeyDoc, ...]:
    return tuple(
        KeyDoc(
            name,
            f"e.g. `{comments[name][0]}`" if name in comments and comments[name][0] else "",
            "",
            comments.get(name, ("", ""))[1],
        )
        for name in names
    )


def _aggregator_tables() -> list[TableDoc]:
    """aggregator.toml: [aggregator], [admission] and its site rules."""
    import aggregator.config as aggregator_config
    import protocol.admission as admission

    aggregator_doc = aggregator_config.__doc__ or ""
    admission_doc = (admission.__doc__ or "").replace("[admission.sites.hospital-a]", "[admission.sites.<id>]")
    admission_doc = admission_doc.replace("[admission.sites.wearable-7]", "[admission.sites.<id>]")
    return [
        TableDoc(
            "aggregator.toml",
            "aggregator",
            _struct_keys(aggregator_config.AggregatorTable, docstring_keys(aggregator_doc, "aggregator")),
        ),
        TableDoc(
            "aggregator.toml",
            "admission",
            _listed_keys(admission.ADMISSION_KEYS, docstring_keys(admission_doc, "admission")),
            'Durations: seconds or a string like `"60s"`, `"8h"`. `sites` holds the site rules below.',
        ),
        TableDoc(
            "aggregator.toml",
            "admission.sites.<id>",
            _listed_keys(admission.RULE_KEYS, docstring_keys(admission_doc, "admission.sites.<id>")),
            "One table per site id that may join. Every rule pins `identity_keys` or `organisation_ca`. "
            "Hex lengths: "
            + ", ".join(f"`{name}` {length} bytes" for name, length in admission.HEX_LENGTHS.items())
            + '. `app_id`, `app_attest_root`, `production`: App Attest rules only. `checks."<id>"`: the '
            "parameters of an installed admission check.",
        ),
    ]


def _strategy_table() -> TableDoc:
    """aggregator.toml [task.strategy]: the built-in strategies and each one's own parameters."""
    from aggregator.strategies import _BUILTIN

    return TableDoc(
        "aggregator.toml",
        "task.strategy",
        (
            KeyDoc(
                "name",
                "one of " + ", ".join(f'"{n}"' for n in sorted(_BUILTIN)) + " or an installed strategy",
                '"fedavg"',
                "",
            ),
        ),
        'Or `strategy = "<name>"` in `[task]`. The strategy\'s own parameters go beside `name`: '
        + "; ".join(
            f"{name}: "
            + (
                ", ".join(f"`{k.name}` ({k.allowed}, default {k.default})" for k in _struct_keys(cls.Parameters, {}))
                or "none"
            )
            for name, cls in sorted(_BUILTIN.items())
        )
        + ".",
    )


def _task_tables() -> list[TableDoc]:
    """aggregator.toml: [task], [task.strategy], [task.dp]."""
    import aggregator.rounds as rounds

    rounds_doc = rounds.__doc__ or ""
    return [
        TableDoc("aggregator.toml", "task", _struct_keys(rounds.TaskTable, docstring_keys(rounds_doc, "task"))),
        _strategy_table(),
        TableDoc(
            "aggregator.toml",
            "task.dp",
            _struct_keys(rounds.DpTable, docstring_keys(rounds_doc, "task.dp")),
            "Optional: central differential privacy inside the TEE.",
        ),
    ]


def _parent_table() -> TableDoc:
    """aggregator.toml: [parent] (a leaf of a hierarchical federation)."""
    import attestfl.hierarchy as hierarchy

    return TableDoc(
        "aggregator.toml",
        "parent",
        _struct_keys(hierarchy.ParentTable, docstring_keys(hierarchy.__doc__ or "", "parent")),
        "Optional: this aggregator is a leaf of a hierarchical federation: it forwards each round's partial "
        "aggregate to its root as one of the root's sites (docs/hierarchy.md). Its identity key toward the root: "
        "`attestfl leaf enroll`.",
    )


def _site_tables() -> list[TableDoc]:
    """site.toml: [site] and [data]."""
    import fedsite.config as site_config

    site_doc = site_config.__doc__ or ""
    return [
        TableDoc("site.toml", "site", _listed_keys(site_config.SITE_KEYS, docstring_keys(site_doc, "site"))),
        TableDoc(
            "site.toml",
            "data",
            (
                KeyDoc(
                    "trainer",
                    '`"trainer.py:function"` (relative to site.toml) or `"package.module:function"`',
                    "required for `site run`",
                    "makes the site's TorchTrainer from this table",
                ),
            ),
            "Every other key of `[data]` is the trainer's own (the scaffold's: `seed`, `examples`, `epochs`, `lr`).",
        ),
    ]


def reference_tables() -> list[TableDoc]:
    """Every table of every configuration file, from what the readers declare."""
    return _more([*_aggregator_tables(), *_task_tables(), _parent_table(), *_site_tables()])


REFERENCE_HEADER = """# Configuration reference

<!-- generated by `attestfl config reference` from the readers' schemas (attestfl/configtool.py);
     do not edit: tests/test_config_reference.py fails when this page and the code disagree -->

Every file is TOML, read whole and checked before anything starts: strict types (`rounds = "5"`
is an error, not coerced), bounds, durations (seconds, or `"90s"`, `"15m"`, `"2h"`, `"1d"`),
`host:port` addresses (IPv6 in brackets). Relative paths are relative to the file's directory.
An error is one line naming the file, the table and key, and what is allowed, e.g.

    aggregator.toml: [task] rounds: expected an integer from 1 to 100000, got "x"

Check a file without starting anything: `attestfl config check FILE` (the kind, `aggregator`,
`site`, `task`, `admission` or `policy`, comes from its tables, or `--kind`). Attestation
policies (`site-policy.toml`, `aggregator-policy.toml`) are described in docs/attestation.md.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_reference() -> str:
    lines = [REFERENCE_HEADER]
    current_file = None
    for table in reference_tables():
        if table.file != current_file:
            current_file = table.file
            lines.append(f"## `{table.file}`\n")
        lines.append(f"### `[{table.table}]`\n")
        if table.note:
            lines.append(table.note + "\n")
        lines.append("| key | allowed | default | what |")
        lines.append("|---|---|---|---|")
        for key in table.keys:
            lines.append(f"| `{key.name}` | {_cell(key.allowed)} | {_cell(key.default)} | {_cell(key.description)} |")
        lines.append("")
    return "\n".join(lines)


def run_reference(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    out.write(render_reference())
    return EXIT_OK


# ---- add-site and pin ------------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    write_atomically(path, text)


def add_site(config: Path, site_id: str, identity_key: str, platforms: list[str], max_weight: float | None) -> str:
    """Append ``[admission.sites.<site_id>]`` to ``config``; the rule is checked first."""
    from protocol.admission import read_site_rule

    data, raw = load_toml(config)
    sites = data.get("admission", {}).get("sites", {}) if isinstance(data.get("admission"), dict) else {}
    if site_id in sites:
        raise ConfigToolError(f"{config}: [admission.sites.{site_id}] is already there; edit it by hand")
    rule: dict[str, Any] = {"platforms": platforms, "identity_keys": [identity_key.strip().lower()]}
    if max_weight is not None:
        rule["max_weight"] = max_weight
    try:
        read_site_rule(site_id, rule, config.parent)
    except (PolicyError, ValueError) as exc:
        raise ConfigToolError(f"{config}: the rule for {site_id}: {exc}") from None
    block = (
        f"\n[admission.sites.{site_id}]\n"
        f"platforms = [{', '.join(json.dumps(p) for p in platforms)}]\n"
        f'identity_keys = ["{rule["identity_keys"][0]}"]\n'
        + (f"max_weight = {max_weight:g}\n" if max_weight is not None else "")
    )
    text = raw.decode("utf-8")
    _write_atomic(config, text + ("" if text.endswith("\n") else "\n") + block)
    return block


def run_add_site(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    site_id, key = args.id, args.identity_key
    if args.enrolment:
        try:
            enrolment = json.loads(Path(args.enrolment).read_text(encoding="utf-8"))
            site_id = site_id or enrolment["site"]
            key = key or enrolment["identity_key"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigToolError(
                f"{args.enrolment}: not the JSON `attestfl site enroll --json` prints ({type(exc).__name__}: {exc})"
            ) from None
    if not site_id or not key:
        raise ConfigToolError("give --enrolment FILE, or --id and --identity-key")
    from attestation.bundle_abi import cpu_platforms

    platforms = args.platform or list(cpu_platforms())
    block = add_site(Path(args.config), site_id, key, platforms, args.max_weight)
    print(f"{args.config}: admitted site {site_id}:{block}", file=out, end="")
    return EXIT_OK


def measurement_pin(name: str) -> tuple[str, str]:
    """(policy table, key) where a policy pins the launch measurement of platform ``name``."""
    from attestation.platforms import registry

    platform = registry.get(name)
    pin = platform.measurement_pin
    if pin is None:
        raise ConfigToolError(f"platform {name} has no launch measurement to pin")
    return platform.policy_key, pin.field


def pin_measurement(site_config: Path, measurements: list[str], platform: str | None = None) -> Path:
    """Set the aggregator measurement pins in the policy file ``[site] policy`` names, for
    ``platform`` (default: the one CPU platform the policy accepts); the policy is checked."""
    from attestation.policy import Policy

    data, _raw = load_toml(site_config)
    site = data.get("site", {}) if isinstance(data.get("site"), dict) else {}
    if not isinstance(site.get("policy"), str):
        raise ConfigToolError(f"{site_config}: [site] policy: required (the file to pin the measurement in)")
    values = []
    for text in measurements:
        value = text.strip().lower().removeprefix("0x")
        if not re.fullmatch(r"[0-9a-f]{96}", value):
            raise ConfigToolError(f"--measurement: expected 48 bytes as 96 hex digits, got {text!r}")
        values.append(value)
    from attestation.bundle_abi import cpu_platforms

    policy = site_config.parent / site["policy"]
    text = policy.read_text(encoding="utf-8") if policy.exists() else ""
    if platform is None:
        try:
            accepted = tomllib.loads(text).get("platforms", list(cpu_platforms()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigToolError(f"{policy}: not valid TOML: {exc}") from None
        candidates = [p for p in cpu_platforms() if p in accepted]
        if len(candidates) != 1:
            raise ConfigToolError(
                f"{policy}: accepts {', '.join(candidates) or 'no CPU platform'} for the aggregator: "
                "say which platform's measurement this is with --platform"
            )
        platform = candidates[0]
    table, key = measurement_pin(platform)
    lines = text.splitlines()
    pin = f"{key} = [{', '.join(json.dumps(v) for v in values)}]"
    start = next((i for i, line in enumerate(lines) if line.strip() == f"[{table}]"), None)
    if start is None:
        lines += ["", f"[{table}]", pin]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        at = next((i for i in range(start + 1, end) if re.match(rf"^\s*{key}\s*=", lines[i])), None)
        if at is None:
            lines.insert(start + 1, pin)
        else:
            lines[at] = pin
    text = "\n".join(lines) + "\n"
    try:
        Policy.from_toml(text)
    except (PolicyError, tomllib.TOMLDecodeError) as exc:
        raise ConfigToolError(f"{policy}: the pinned policy would not load: {exc}") from None
    _write_atomic(policy, text)
    return policy


def run_pin(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    policy = pin_measurement(Path(args.config), args.measurement, args.platform)
    print(f"{policy}: pinned the aggregator measurement {', '.join(args.measurement)}", file=out)
    return EXIT_OK


def add_config_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = subparsers.add_parser("config", help="check configuration files; print the configuration reference")
    sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="check a configuration file without starting anything",
        description="Read FILE as its party would (aggregator.toml, site.toml, a [task] table, an admission "
        "policy, an attestation policy; the kind comes from its tables or --kind). Exit 0: usable; 2: the "
        "error, naming the file, the key and what is allowed.",
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument("--kind", choices=KINDS, help="the kind of file (default: from its tables)")
    check.set_defaults(handler=run_check)
    reference = sub.add_parser("reference", help="print the configuration reference (docs/configuration.md)")
    reference.set_defaults(handler=run_reference)
    add = sub.add_parser(
        "add-site",
        help="admit a site: append its [admission.sites.<id>] rule pinning its identity key",
        description="Append the site's rule to aggregator.toml (refused if the site already has one). The key "
        "comes from the site's `attestfl site enroll --json` output (--enrolment) or --id/--identity-key.",
    )
    add.add_argument("config", metavar="AGGREGATOR_TOML")
    add.add_argument("--enrolment", metavar="JSON", help="what `attestfl site enroll --json` printed at the site")
    add.add_argument("--id", help="the site id (default: the enrolment's)")
    add.add_argument("--identity-key", metavar="HEX", help="the site's identity key (default: the enrolment's)")
    add.add_argument(
        "--platform",
        action="append",
        metavar="NAME",
        help="a platform the site attests with (repeatable; default sev-snp and tdx)",
    )
    add.add_argument("--max-weight", type=float, metavar="N", help="the largest example count the site may claim")
    add.set_defaults(handler=run_add_site)
    pin = sub.add_parser(
        "pin",
        help="pin the aggregator's measurement in a site's aggregator policy",
        description="Set the measurement(s) the aggregator must run in the policy file [site] policy names "
        "(recompute the value yourself first: `attestfl enclave measure --config aggregator.toml` for the "
        "simulated TEE, docs/operators.md for hardware).",
    )
    pin.add_argument("config", metavar="SITE_TOML")
    pin.add_argument("--measurement", action="append", required=True, metavar="HEX", help="repeatable")
    pin.add_argument("--platform", metavar="NAME", help="the aggregator's platform (default: the policy's only one)")
    pin.set_defaults(handler=run_pin)
