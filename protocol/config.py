"""How every party reads its TOML file: bounded, typed, and with errors that name the file,
the table and the key and say what is allowed.

Every value is checked when the file is loaded, before anything is created or started:
strict types (``rounds = "5"`` and ``evaluate = "no"`` are errors, not coerced), finite
numbers, durations longer than zero, addresses parsed as host:port. An error is one
:class:`ConfigError` line, e.g. ``/etc/attestfl/aggregator.toml: [task] rounds: expected an
integer from 1 to 100000, got "5"``. Tables are described by :mod:`msgspec` Structs
(:func:`read_struct`). The aggregator's file is :mod:`aggregator.config`, a site's
:mod:`fedsite.config`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import msgspec.inspect as schema_info
from msgspec import Meta

from attestation.errors import AttestflError

#: The longest duration any key accepts (a week): a larger value is a typo, not a deadline.
MAX_DURATION_SECONDS = 7 * 86400


class ConfigError(AttestflError, ValueError):
    """A configuration file is unusable; the message names the file and key."""


#: A configuration file is never larger than this (it is read whole, and measured).
MAX_CONFIG_BYTES = 1024 * 1024


def load_toml(path: Path) -> tuple[dict[str, Any], bytes]:
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
PathText = Annotated[
    str, Meta(min_length=1, max_length=4096, pattern=r"^[^\x00]+$", description="a path (a non-empty string)")
]
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
    if isinstance(
        kind, (schema_info.ListType, schema_info.SetType, schema_info.FrozenSetType, schema_info.VarTupleType)
    ):
        return (
            f"a list of {describe(kind.item_type).removeprefix('a ').removeprefix('an ')}s"
            if isinstance(kind.item_type, (schema_info.StrType,))
            else f"a list, each {describe(kind.item_type)}"
        )
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
            raise error(
                f"[{section}] {key}: expected {describe(fields[key].type)}, got {value_repr(table.get(key))}"
            ) from None
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


def parse_duration(
    value: int | str,
    section: str,
    key: str,
    *,
    maximum: float = MAX_DURATION_SECONDS,
    error: type[ValueError] = ConfigError,
) -> float:
    """A :data:`Duration` in seconds: longer than zero and at most ``maximum``."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        if not match:
            raise error(f"[{section}] {key}: expected {_DURATION_TEXT}, got {value_repr(value)}")
        seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 0 < seconds <= maximum:
        raise error(
            f"[{section}] {key}: expected a duration longer than zero and at most {format_seconds(maximum)}, "
            f"got {value_repr(value)}"
        )
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
    lowest = 0 if allow_port_zero else 1
    return f'host:port with a port from {lowest} to 65535 (an IPv6 address in brackets, like "[::1]:7443")'


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


def read_endpoint(
    value: str, section: str, key: str, *, allow_port_zero: bool = False, default_host: str | None = None
) -> Endpoint:
    try:
        return parse_endpoint(value, allow_port_zero=allow_port_zero, default_host=default_host)
    except ValueError as exc:
        raise ConfigError(
            f"[{section}] {key}: expected {endpoint_form(allow_port_zero)}, got {value_repr(value)}: {exc}"
        ) from None


# ---- aggregator.toml ---------------------------------------------------------------------------


def no_tee_error(path: Path, section: str, tee: str, exc: Exception) -> ConfigError:
    """A configured ``tee`` this machine does not have, as the one-line configuration error that
    names the file, the key and the options (rather than the attester's command-line hint)."""
    from enclave.attester import TEE_CHOICES

    found = str(exc).split(". On a machine without", 1)[0]
    return ConfigError(
        f"{path}: [{section}] tee = {value_repr(tee)}: {found}. Allowed: {', '.join(TEE_CHOICES)}; without SEV-SNP "
        'or TDX hardware set tee = "simulated-snp" (or "simulated-tdx") and simulated_dir (development only)'
    )
