"""``aggregator.toml`` (the operator's file) and ``site.toml`` (a site's file).

aggregator.toml::

    [aggregator]
    listen = "0.0.0.0:7443"            # gRPC (plaintext is fine: payloads are sealed end to end);
                                       # host:port, IPv6 in brackets ("[::]:7443"), port 0: any free port
    tee = "auto"                       # auto | sev-snp | tdx | simulated-snp | simulated-tdx
    simulated_dir = "sim-tee"          # the simulated TEE's root of trust (simulated-* only)
    gpu = "none"                       # none | nvml | simulated
    metrics_listen = "127.0.0.1:9464"  # Prometheus metrics, unauthenticated: keep it on loopback;
                                       # "" (the default) disables, ":9464" binds 127.0.0.1
    log_dir = "audit-log"              # the tamper-evident event log
    state_dir = "state"                # sealed checkpoints
    stall_timeout = "30s"              # an upload that sends nothing for this long is aborted

    [admission]  -> aggregator.admission      [task] -> aggregator.rounds

Every value is checked when the file is loaded, before anything is created or started:
strict types (``rounds = "5"`` and ``evaluate = "no"`` are errors, not coerced), finite
numbers, durations longer than zero, addresses parsed as host:port. An error is one
:class:`ConfigError` line that names the file, the table and the key and says what is
allowed, e.g. ``/etc/attestfl/aggregator.toml: [task] rounds: expected an integer from 1 to
100000, got "5"``. Tables are described by :mod:`msgspec` Structs (:func:`read_struct`).

site.toml::

    [site]
    id = "hospital-a"
    aggregator = "aggregator.example.org:7443"
    tee = "auto"                       # how this site attests itself (as above)
    simulated_dir = "sim-tee"
    policy = "aggregator-policy.toml"  # attestation policy for the aggregator's evidence:
                                       # trusted roots, pinned measurement(s) (required), TCB minima
    identity = "identity.sealed"       # the sealed identity key `attestfl site enroll` writes
    identity_certificate = "site.crt"  # optional: its certificate under the organisation CA
    INSECURE_accept_any_aggregator = false  # run with a policy that pins no measurement (never in production)
    max_clock_skew = "60s"             # how far this site's and the aggregator's clocks may disagree
    state_dir = "site-state"           # receipts.jsonl and the newest audit tree head seen
    [data]                              # for `attestfl site run` with the demo trainer
    ...

Relative paths are relative to the file's directory.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import math
import re
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec
import msgspec.inspect as schema_info
from msgspec import Meta

from attestation.errors import PolicyError
from attestation.policy import Policy
from attestation.validate.fields import read_duration, read_hex, read_table, reject_unknown_keys

from enclave.attester import TEE_CHOICES

from aggregator.admission import AdmissionPolicy, valid_site_id

if TYPE_CHECKING:
    from aggregator.rounds import TaskConfig

GPU_CHOICES = ("none", "nvml", "simulated")
#: The longest duration any key accepts (a week): a larger value is a typo, not a deadline.
MAX_DURATION_SECONDS = 7 * 86400
#: Where a ``metrics_listen`` without a host binds.
DEFAULT_METRICS_HOST = "127.0.0.1"


class ConfigError(ValueError):
    """A configuration file is unusable; the message names the file and key."""


#: A configuration file is never larger than this (it is read whole, and measured).
MAX_CONFIG_BYTES = 1024 * 1024


def _load_toml(path: Path) -> tuple[dict[str, Any], bytes]:
    from attestation.files import read_bounded

    try:
        raw = read_bounded(path, MAX_CONFIG_BYTES, "configuration file", ConfigError)
        return tomllib.loads(raw.decode("utf-8")), raw
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


# ---- typed tables ------------------------------------------------------------------------------
# A table is a msgspec Struct (forbid_unknown_fields, kw_only): msgspec checks the types strictly
# (no str -> int, no "no" -> bool; an int is taken where a float is expected) and the bounds given
# with Meta; read_struct turns its errors into "[table] key: expected <what the schema allows>,
# got <the value as TOML spells it>" and refuses infinite floats.

#: A path in the file: a non-empty string without NUL, relative to the file's directory.
PathText = Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^[^\x00]+$",
                               description="a path (a non-empty string)")]
_DURATION_TEXT = 'a duration longer than zero: seconds (an integer) or a string like "90s", "15m", "2h", "1d"'
#: A duration: integer seconds or "<n>s|m|h|d" (checked by :func:`parse_duration`).
Duration = Annotated[int | str, Meta(description=_DURATION_TEXT)]
_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhd]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

S = TypeVar("S", bound=msgspec.Struct)


def value_repr(value: Any, limit: int = 80) -> str:
    """A value as TOML spells it (strings quoted, true/false, inf, nan), cut to ``limit``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, float):
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    elif isinstance(value, int):
        text = str(value) if value.bit_length() < 200 else f"an integer of {len(str(abs(value)))} digits"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "[" + ", ".join(value_repr(v, limit) for v in value[:4]) + (", ..." if len(value) > 4 else "") + "]"
    elif isinstance(value, (datetime.date, datetime.time)):
        text = value.isoformat()
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounds(kind: Any, integer: bool) -> str:
    lo, lo_open = (kind.ge, False) if kind.ge is not None else (kind.gt, True)
    hi, hi_open = (kind.le, False) if kind.le is not None else (kind.lt, True)
    if lo is None and hi is None:
        return ""
    if integer and not lo_open and not hi_open and lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if hi is None:
        return f" {'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f" {'<' if hi_open else '<='} {hi}"
    return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def describe(kind: Any) -> str:
    """What a msgspec type (:func:`msgspec.inspect.type_info`) allows, in words."""
    if isinstance(kind, schema_info.Metadata):
        return (kind.extra_json_schema or {}).get("description") or describe(kind.type)
    if isinstance(kind, schema_info.UnionType):
        return " or ".join(describe(k) for k in kind.types if not isinstance(k, schema_info.NoneType))
    if isinstance(kind, schema_info.BoolType):
        return "true or false"
    if isinstance(kind, schema_info.IntType):
        return "an integer" + _bounds(kind, True)
    if isinstance(kind, schema_info.FloatType):
        return "a finite number" + _bounds(kind, False)
    if isinstance(kind, schema_info.StrType):
        return "a string"
    if isinstance(kind, schema_info.LiteralType):
        return "one of " + ", ".join(value_repr(v) for v in kind.values)
    if isinstance(kind, schema_info.DictType):
        return "a table"
    return str(kind)


@cache
def _fields(schema: type[msgspec.Struct]) -> dict[str, Any]:
    info = schema_info.type_info(schema)
    assert isinstance(info, schema_info.StructType)
    return {field.encode_name: field for field in info.fields}


def read_struct(table: Any, schema: type[S], section: str, error: type[ValueError] = ConfigError) -> S:
    """``table`` (a TOML table) checked against ``schema``; ``error`` names ``[section] key``."""
    if not isinstance(table, dict):
        raise error(f"[{section}]: expected a table, got {value_repr(table)}")
    fields = _fields(schema)
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise error(f"[{section}]: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    try:
        result = msgspec.convert(table, schema, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = re.search(r" - at `\$\.([^`.\[]+)", message)
        if at and at.group(1) in fields:
            key = at.group(1)
            raise error(f"[{section}] {key}: expected {describe(fields[key].type)}, got {value_repr(table.get(key))}") from None
        missing = re.search(r"missing required field `([^`]+)`", message)
        if missing and missing.group(1) in fields:
            key = missing.group(1)
            raise error(f"[{section}] {key}: required: {describe(fields[key].type)}") from None
        raise error(f"[{section}]: {message}") from None
    for key, field in fields.items():
        value = getattr(result, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"[{section}] {key}: expected {describe(field.type)}, got {value_repr(value)}")
    return result


def format_seconds(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def parse_duration(value: int | str, section: str, key: str, *, maximum: float = MAX_DURATION_SECONDS,
                   error: type[ValueError] = ConfigError) -> float:
    """A :data:`Duration` in seconds: longer than zero and at most ``maximum``."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        if not match:
            raise error(f"[{section}] {key}: expected {_DURATION_TEXT}, got {value_repr(value)}")
        seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 0 < seconds <= maximum:
        raise error(f"[{section}] {key}: expected a duration longer than zero and at most {format_seconds(maximum)}, "
                    f"got {value_repr(value)}")
    return float(seconds)


# ---- addresses ---------------------------------------------------------------------------------

_HOSTNAME = re.compile(r"^(?=.{1,253}\.?$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


@dataclass(frozen=True)
class Endpoint:
    """A parsed ``host:port`` (an IPv6 host without its brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host.lower() in ("localhost", "localhost."):
            return True
        try:
            return ipaddress.ip_address(self.host.split("%", 1)[0]).is_loopback
        except ValueError:
            return False

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")


def endpoint_form(allow_port_zero: bool = False) -> str:
    return f"host:port with a port from {0 if allow_port_zero else 1} to 65535 (an IPv6 address in brackets, like \"[::1]:7443\")"


def parse_endpoint(text: str, *, allow_port_zero: bool = False, default_host: str | None = None) -> Endpoint:
    """``host:port`` with an IPv4 address, a DNS name or a bracketed IPv6 address, and a port
    from 1 (0 with ``allow_port_zero``: any free port) to 65535. A missing host is
    ``default_host`` where one is given. :class:`ValueError` says what is wrong, briefly."""
    match = re.fullmatch(r"\[([^\[\]]+)\]:(\d{1,5})|([^\[\]]*):(\d{1,5})", text)
    if "://" in text:
        raise ValueError("not host:port (a URL scheme is not allowed)")
    if match is None:
        if text.count(":") > 1 and "[" not in text:
            raise ValueError("an IPv6 address goes in brackets")
        raise ValueError("not host:port")
    bracketed = match.group(1) is not None
    host = match.group(1) if bracketed else match.group(3)
    port = int(match.group(2) if bracketed else match.group(4))
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets")
    elif not host:
        if default_host is None:
            raise ValueError("the host is missing")
        host = default_host
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host} is not an IPv4 address") from None
    elif not _HOSTNAME.match(host):
        raise ValueError("the host is neither an IP address nor a DNS name")
    return Endpoint(host, port)


def _endpoint(value: str, section: str, key: str, *, allow_port_zero: bool = False, default_host: str | None = None) -> Endpoint:
    try:
        return parse_endpoint(value, allow_port_zero=allow_port_zero, default_host=default_host)
    except ValueError as exc:
        raise ConfigError(f"[{section}] {key}: expected {endpoint_form(allow_port_zero)}, got {value_repr(value)}: {exc}") from None


# ---- aggregator.toml ---------------------------------------------------------------------------

class AggregatorTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``[aggregator]`` table as written (see the module docstring)."""

    listen: Annotated[str, Meta(description='host:port, like "0.0.0.0:7443" or "[::]:7443" (port 0: any free port)')] = "127.0.0.1:7443"
    tee: Literal[TEE_CHOICES] = "auto"  # type: ignore[valid-type]
    simulated_dir: PathText | None = None
    gpu: Literal[GPU_CHOICES] = "none"  # type: ignore[valid-type]
    metrics_listen: Annotated[str, Meta(description='host:port like "127.0.0.1:9464", or "" (off)')] = ""
    log_dir: PathText = "audit-log"
    state_dir: PathText = "state"
    stall_timeout: Duration = 30


_TABLES = ("aggregator", "admission", "task")


@dataclass(frozen=True)
class AggregatorConfig:
    path: Path
    raw: bytes  # measured into the simulated TEE's launch measurement
    listen: str
    tee: str
    simulated_dir: Path | None
    gpu: str
    metrics_listen: str
    log_dir: Path
    state_dir: Path
    stall_timeout: float
    admission: AdmissionPolicy
    task: TaskConfig

    @property
    def listen_endpoint(self) -> Endpoint:
        """``listen``, parsed (port 0: the system picks one)."""
        return parse_endpoint(self.listen, allow_port_zero=True)

    @property
    def metrics_endpoint(self) -> Endpoint | None:
        """``metrics_listen``, parsed (no host: 127.0.0.1); None when metrics are off."""
        return parse_endpoint(self.metrics_listen, default_host=DEFAULT_METRICS_HOST) if self.metrics_listen else None

    @classmethod
    def load(cls, path: str | Path) -> "AggregatorConfig":
        """Read and check the whole file. Nothing is created, bound or started here."""
        from aggregator.rounds import TaskConfig

        path = Path(path).resolve()
        data, raw = _load_toml(path)
        base = path.parent
        try:
            unknown = sorted(set(data) - set(_TABLES))
            if unknown:
                raise ConfigError(f"unknown table(s) {', '.join(unknown)}; allowed: {', '.join(f'[{t}]' for t in _TABLES)}")
            for name in _TABLES:
                if not isinstance(data.get(name, {}), dict):
                    raise ConfigError(f"[{name}]: expected a table, got {value_repr(data[name])}")
            section = read_struct(data.get("aggregator", {}), AggregatorTable, "aggregator")
            listen = _endpoint(section.listen, "aggregator", "listen", allow_port_zero=True)
            if section.metrics_listen:
                metrics = _endpoint(section.metrics_listen, "aggregator", "metrics_listen", default_host=DEFAULT_METRICS_HOST)
                if metrics.port == listen.port and (metrics.host == listen.host or metrics.is_wildcard or listen.is_wildcard):
                    raise ConfigError(f"[aggregator] metrics_listen: port {metrics.port} is the gRPC port of listen; use another port")
            if section.tee.startswith("simulated") and section.simulated_dir is None:
                raise ConfigError("[aggregator] simulated_dir: required for a simulated TEE (a path)")
            log_dir, state_dir = base / section.log_dir, base / section.state_dir
            if log_dir.resolve() == state_dir.resolve():
                raise ConfigError(f"[aggregator] state_dir: must differ from log_dir, got {value_repr(section.state_dir)}")
            stall = parse_duration(section.stall_timeout, "aggregator", "stall_timeout")
            admission = AdmissionPolicy.from_table(data.get("admission", {}), base)
            task = TaskConfig.from_table(data.get("task", {}), base)
            return cls(
                path=path,
                raw=raw,
                listen=section.listen,
                tee=section.tee,
                simulated_dir=base / section.simulated_dir if section.simulated_dir is not None else None,
                gpu=section.gpu,
                metrics_listen=section.metrics_listen,
                log_dir=log_dir,
                state_dir=state_dir,
                stall_timeout=stall,
                admission=admission,
                task=task,
            )
        except (PolicyError, ValueError) as exc:  # ConfigError, TaskConfigError, PolicyError
            raise ConfigError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class SiteConfig:
    path: Path
    site_id: str
    aggregator: str
    tee: str
    simulated_dir: Path | None
    policy: Policy
    data: dict[str, Any]
    #: The sealed identity key (``attestfl site enroll`` writes it).
    identity: Path = Path("identity.sealed")
    #: Optional: the identity key's certificate under the organisation CA the operator's rule names.
    identity_certificate: Path | None = None
    #: Run even though the policy pins no aggregator measurement (loudly warned; never in production).
    insecure_unpinned: bool = False
    #: Simulated TEE only: launch with this measurement instead of the code's (demos of refusal).
    simulated_measurement: bytes | None = None
    #: How far this site's clock and the aggregator's may disagree.
    max_clock_skew: timedelta = timedelta(seconds=60)
    #: Receipts and the newest audit tree head seen (kept between runs).
    state_dir: Path = Path("site-state")

    @classmethod
    def load(cls, path: str | Path, *, load_policy: bool = True) -> "SiteConfig":
        """The site's configuration; ``load_policy=False`` (enrolment) leaves the aggregator policy unread."""
        from aggregator.site import SitePolicyError, require_measurement_pins

        path = Path(path).resolve()
        data, _raw = _load_toml(path)
        base = path.parent
        try:
            reject_unknown_keys(data, ("site", "data"), str(path))
            section = read_table(data, "site", "site")
            reject_unknown_keys(section, ("id", "aggregator", "tee", "simulated_dir", "policy", "identity", "identity_certificate",
                                          "INSECURE_accept_any_aggregator", "simulated_measurement", "max_clock_skew", "state_dir"), "site")
            skew = read_duration(section, "max_clock_skew", "site")
            if skew is not None and skew.total_seconds() <= 0:
                raise ConfigError("[site] max_clock_skew: must be longer than zero")
            site_id = section.get("id", "")
            if not isinstance(site_id, str) or not valid_site_id(site_id):
                raise ConfigError("[site] id: required, 1-128 letters, digits, '-', '_' or '.'")
            if not isinstance(section.get("aggregator"), str) or not section["aggregator"]:
                raise ConfigError("[site] aggregator: required (host:port)")
            tee = section.get("tee", "auto")
            if tee not in TEE_CHOICES:
                raise ConfigError(f"[site] tee: {tee!r} is not one of {', '.join(TEE_CHOICES)}")
            if not isinstance(section.get("policy"), str):
                raise ConfigError("[site] policy: required: the policy file the aggregator's evidence must pass")
            for key in ("simulated_dir", "identity", "identity_certificate", "state_dir"):
                if key in section and not isinstance(section[key], str):
                    raise ConfigError(f"[site] {key}: expected a path (a string), got {section[key]!r}")
            insecure = section.get("INSECURE_accept_any_aggregator", False)
            if not isinstance(insecure, bool):
                raise ConfigError(f"[site] INSECURE_accept_any_aggregator: expected true or false, got {insecure!r}")
            policy = Policy.load(base / section["policy"]) if load_policy else Policy()
            if load_policy:
                try:
                    require_measurement_pins(policy, allow_unpinned=insecure)
                except SitePolicyError as exc:
                    raise ConfigError(f"[site] policy {section['policy']}: {exc}") from None
            return cls(
                path=path,
                site_id=site_id,
                aggregator=section["aggregator"],
                tee=tee,
                simulated_dir=base / section["simulated_dir"] if "simulated_dir" in section else None,
                policy=policy,
                data=read_table(data, "data", "site"),
                identity=base / section.get("identity", "identity.sealed"),
                identity_certificate=base / section["identity_certificate"] if "identity_certificate" in section else None,
                insecure_unpinned=insecure,
                simulated_measurement=read_hex(section, "simulated_measurement", "site", 48),
                max_clock_skew=skew or timedelta(seconds=60),
                state_dir=base / section.get("state_dir", "site-state"),
            )
        except PolicyError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
