"""The one registry of platforms: every lookup of a platform by name, by evidence bytes or by
policy attribute goes through here.

The built-in platforms (:data:`BUILTIN`) are loaded first, then every entry point of the
group :data:`ENTRY_POINT_GROUP` (``attestfl.platforms``), each naming a
:class:`~attestation.platforms.base.Platform` object (``toy = "toy_platform:PLATFORM"``) whose
``name`` is the entry point's name; third-party platforms come after the built-ins, by name.
Loading happens once, on the first lookup. :func:`register` adds a platform from code
(tests, embedding applications).

Nothing here imports a platform module: the built-ins are named as entry points are
(``module:attribute``) and imported on first use, so platform packages depend on the core,
never the reverse.

A third-party platform is accepted only by a policy that names it: the default ``platforms``
of a policy are the built-in ones (:func:`builtin_names`).
"""

from __future__ import annotations

import importlib
import re
import threading
from importlib import metadata

from ..errors import EvidenceFormatError, PlatformError
from .base import COMMON_POLICY_KEYS, Platform

#: The entry point group third-party platforms register under.
ENTRY_POINT_GROUP = "attestfl.platforms"
#: The built-in platforms, in order, as ``module:attribute``.
BUILTIN = (
    "attestation.platforms.snp.platform:PLATFORM",
    "attestation.platforms.tdx.platform:PLATFORM",
    "attestation.platforms.nvidia.platform:PLATFORM",
)
#: Names no platform may take: ``auto`` (detect the platform) and ``app-attest`` (the
#: admission policy's name for App Attest, which is not a registered platform).
RESERVED_NAMES = frozenset({"auto", "app-attest"})
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")

_lock = threading.RLock()
_platforms: dict[str, Platform] = {}
_builtin: tuple[str, ...] = ()
_loaded = False
_failure: PlatformError | None = None


def _load(reference: str, where: str) -> Platform:
    module, _, attribute = reference.partition(":")
    try:
        value = getattr(importlib.import_module(module), attribute)
    except Exception as exc:
        raise PlatformError(f"{where}: cannot load {reference}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(value, Platform):
        raise PlatformError(
            f"{where}: {reference} is a {type(value).__name__}, not a Platform (see attestation.platforms.base)"
        )
    return value


def _check(platform: Platform, where: str) -> None:
    name = platform.name
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise PlatformError(
            f"{where}: {name!r} is not a usable platform name (1-32 lowercase letters, digits and '-', "
            f"not {', '.join(sorted(RESERVED_NAMES))})"
        )
    key = platform.policy_key
    if not isinstance(key, str) or not key or key in COMMON_POLICY_KEYS:
        raise PlatformError(f"{where}: platform {name}: policy key {key!r} is empty or a common policy key")
    for other in _platforms.values():
        if other.name == name:
            continue
        if other.policy_key == key:
            raise PlatformError(f"{where}: platform {name}: policy key [{key}] is already platform {other.name}'s")
        if platform.policy_attribute is not None and other.policy_attribute == platform.policy_attribute:
            raise PlatformError(
                f"{where}: platform {name}: "
                f"policy attribute {platform.policy_attribute!r} is already platform {other.name}'s"
            )


def _add(platform: Platform, where: str, *, replace: bool = False) -> Platform:
    _check(platform, where)
    existing = _platforms.get(platform.name)
    if existing is not None and existing is not platform and not replace:
        raise PlatformError(f"{where}: a platform named {platform.name!r} is already registered")
    _platforms[platform.name] = platform
    return platform


def _discover() -> None:
    """Load the built-ins and the entry points, once. A plug-in that cannot be loaded makes
    every lookup fail with the same :class:`PlatformError` (fail closed: a platform the
    operator installed is never silently missing)."""
    global _loaded, _builtin, _failure
    with _lock:
        if _loaded:
            if _failure is not None:
                raise _failure
            return
        _loaded = True
        try:
            builtin = [_add(_load(reference, "attestfl"), "attestfl") for reference in BUILTIN]
            _builtin = tuple(p.name for p in builtin)
            found = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name, ep.value))
            for entry_point in found:
                where = f"entry point {entry_point.name} = {entry_point.value} ({ENTRY_POINT_GROUP})"
                platform = _load(entry_point.value, where)
                if platform.name != entry_point.name:
                    raise PlatformError(f"{where}: the platform is named {platform.name!r}, not {entry_point.name!r}")
                _add(platform, where)
        except PlatformError as exc:
            _failure = exc
            raise


def register(platform: Platform, *, replace: bool = False) -> Platform:
    """Add ``platform`` (after the built-ins and entry points); :class:`PlatformError` when it
    is not a :class:`~attestation.platforms.base.Platform`, its name or policy key is unusable
    or taken, unless ``replace`` (a built-in platform is never replaced)."""
    where = f"register({type(platform).__name__})"
    if not isinstance(platform, Platform):
        raise PlatformError(f"{where}: not a Platform (see attestation.platforms.base)")
    with _lock:
        _discover()
        if platform.name in _builtin and _platforms[platform.name] is not platform:
            raise PlatformError(f"{where}: {platform.name!r} is a built-in platform and cannot be replaced")
        return _add(platform, where, replace=replace)


def unregister(name: str) -> None:
    """Remove a platform added by :func:`register` or an entry point (tests); built-ins stay."""
    with _lock:
        _discover()
        if name in _builtin:
            raise PlatformError(f"{name!r} is a built-in platform and cannot be removed")
        _platforms.pop(name, None)


def platforms() -> tuple[Platform, ...]:
    """Every registered platform: the built-ins, then third-party ones by name."""
    _discover()
    with _lock:
        return tuple(_platforms.values())


def names() -> tuple[str, ...]:
    """The names of :func:`platforms`, in order."""
    return tuple(p.name for p in platforms())


def builtin_names() -> tuple[str, ...]:
    """The names of the built-in platforms: the ``platforms`` a policy accepts by default.
    Known even when a third-party plug-in cannot be loaded (the built-ins load first)."""
    try:
        _discover()
    except PlatformError:
        if not _builtin:
            raise
    return _builtin


def find(name: str) -> Platform | None:
    """The platform called ``name``, or None."""
    _discover()
    with _lock:
        return _platforms.get(name)


def get(name: str) -> Platform:
    """The platform called ``name``; :class:`PlatformError` naming the known ones when there is none."""
    platform = find(name) if isinstance(name, str) else None
    if platform is None:
        raise PlatformError(f"unknown platform {name!r}; known: {', '.join(names())}")
    return platform


def by_policy_attribute(attribute: str) -> Platform | None:
    """The platform whose policy section :class:`~attestation.policy.Policy` exposes as
    ``attribute`` (``policy.snp``)."""
    return next((p for p in platforms() if p.policy_attribute == attribute), None)


def detect(data: bytes) -> Platform:
    """The one platform whose :meth:`~attestation.platforms.base.Platform.detect` recognises raw
    evidence; :class:`EvidenceFormatError` when none does, or more than one (name it then)."""
    candidates = platforms()
    matches = [p for p in candidates if p.detect(data)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise EvidenceFormatError(
            f"the evidence ({len(data)} bytes) looks like {' and '.join(p.name for p in matches)} evidence; "
            "name its platform"
        )
    kinds = [p.description for p in candidates]
    listed = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]
    raise EvidenceFormatError(f"unrecognised evidence ({len(data)} bytes): not {listed}")


__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "RESERVED_NAMES",
    "builtin_names",
    "by_policy_attribute",
    "detect",
    "find",
    "get",
    "names",
    "platforms",
    "register",
    "unregister",
]
