"""Typed readers for policy TOML tables: every value is checked, unknown keys are errors."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from ..errors import PolicyError


def reject_unknown_keys(table: dict[str, Any], allowed: Iterable[str], section: str) -> None:
    allowed = tuple(allowed)
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise PolicyError(f"[{section}]: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def read_bool(table: dict[str, Any], key: str, section: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(f"[{section}] {key}: expected true or false, got {value!r}")
    return value


def read_int(
    table: dict[str, Any],
    key: str,
    section: str,
    default: int | None = None,
    *,
    minimum: int = 0,
    maximum: int | None = None,
) -> int | None:
    value = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"[{section}] {key}: expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise PolicyError(
            f"[{section}] {key}: {value} is out of range [{minimum}, {maximum if maximum is not None else 'inf'}]"
        )
    return value


def parse_hex(value: Any, where: str, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise PolicyError(f"{where}: expected a hex string, got {value!r}")
    text = value.strip().lower().removeprefix("0x")
    if not re.fullmatch(r"(?:[0-9a-f]{2})*", text):
        raise PolicyError(f"{where}: not a hex string: {value!r}")
    raw = bytes.fromhex(text)
    if length is not None and len(raw) != length:
        raise PolicyError(f"{where}: expected {length} bytes ({2 * length} hex digits), got {len(raw)}")
    return raw


def read_hex(table: dict[str, Any], key: str, section: str, length: int | None = None) -> bytes | None:
    if key not in table:
        return None
    return parse_hex(table[key], f"[{section}] {key}", length)


def read_hex_set(table: dict[str, Any], key: str, section: str, length: int | None = None) -> frozenset[bytes]:
    """A list of hex values (a single string is taken as a one-element list)."""
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise PolicyError(f"[{section}] {key}: expected a list of hex strings")
    return frozenset(parse_hex(v, f"[{section}] {key}", length) for v in value)


def read_str_set(
    table: dict[str, Any], key: str, section: str, allowed: Iterable[str] | None = None, default: Iterable[str] = ()
) -> frozenset[str]:
    value = table.get(key, list(default))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"[{section}] {key}: expected a list of strings")
    if allowed is not None:
        allowed_set = set(allowed)
        bad = [v for v in value if v not in allowed_set]
        if bad:
            raise PolicyError(
                f"[{section}] {key}: unknown value(s) {', '.join(bad)}; allowed: {', '.join(sorted(allowed_set))}"
            )
    return frozenset(value)


_DURATION = re.compile(r"^\s*(\d{1,12})\s*([smhd]?)\s*$")
#: No policy duration is longer than this (100 years); longer values are errors, not overflows.
MAX_DURATION = timedelta(days=36500)


def read_duration(table: dict[str, Any], key: str, section: str) -> timedelta | None:
    """A duration as integer seconds or a string like "30d", "12h", "15m", "90s", at most
    :data:`MAX_DURATION`."""
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        seconds = value
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        if not match:
            raise PolicyError(f'[{section}] {key}: expected seconds or a duration like "30d", got {value!r}')
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
    if seconds > MAX_DURATION.total_seconds():
        raise PolicyError(f"[{section}] {key}: {value!r} is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def read_table(table: dict[str, Any], key: str, section: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise PolicyError(f"[{section}] {key}: expected a table")
    return value
