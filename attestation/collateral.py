"""The verifier's collateral: revocation lists, TCB info, identities and certificates chosen by
the verifier, never by the evidence.

A :class:`CollateralStore` is opened on a **cache directory** (the offline source), optionally
with a :class:`CollateralFetcher` that asks the vendors' services for what is missing or stale
and writes it into the directory. :func:`attestation.bundle.appraise_bundle` given a store
ignores the collateral a bundle carries: a site cannot strip its CRL (or bring an old one) to
turn "revoked" into "admitted".

The store knows no platform. Each platform package describes its documents as
:class:`CollateralItem` values (where in the cache, how to parse, when fresh, how to fetch)
and asks :meth:`CollateralStore.lookup`; the cache layout is the union of theirs, one top-level
folder per vendor (``docs/attestation.md`` lists it):

* ``amd/...`` — SEV-SNP (:mod:`attestation.platforms.snp.collateral`): AMD CRLs and VCEKs
  from AMD KDS;
* ``intel/...`` — TDX (:mod:`attestation.platforms.tdx.collateral`): TCB info, QE identity,
  PCK and root CA CRLs from Intel PCS.

Freshness: a CRL is used only between its thisUpdate and nextUpdate, a signed document only
between its issueDate and nextUpdate, and, when the policy sets ``max_collateral_age``, only
if issued no longer ago than that. Anything else is *not used* (the lookup says why) and,
with a fetcher, fetched again (at most once per ``refetch_after`` per document). Whether
missing collateral fails the appraisal is the policy's ``require_collateral``.

Caching: each file's bytes are parsed once (kept by the SHA-256 of its bytes; a file is
re-read only when its size, mtime or inode changes, checked at most once per
``recheck_after``); signature verdicts are memoised by
:data:`attestation.verify.chain.SIGNATURE_MEMO`. A warm store adds file ``stat`` calls and
time comparisons to an appraisal, no signature checks.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from .abi.x509 import (
    MAX_CERT_INPUT_BYTES,
    Certificate,
    RevocationList,
    parse_certificate,
    parse_certificates,
    parse_crl,
)
from .errors import (
    AttestationError,
    CertificateFormatError,
    CollateralError,
    CollateralFetchError,
    CollateralFormatError,
)
from .files import read_bounded
from .timeutil import as_utc

#: No CRL in the cache is larger than this.
MAX_CRL_BYTES = 4 * MAX_CERT_INPUT_BYTES
#: No response of a vendor service is larger than this.
MAX_RESPONSE_BYTES = 1024 * 1024
#: Documents whose fetch failed recently and is not tried again yet, at most.
MAX_REFUSED_FETCHES = 4096


# --- fetching -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchConfig:
    """Where and how the fetcher asks. Base URLs are configurable per vendor service (tests
    point them at a loopback server): AMD KDS and Intel PCS here, any other service a
    platform asks in ``service_urls`` (service name -> base URL; the platform documents its
    service name and default, see :meth:`url_for`); ``timeout`` bounds each request in
    total, ``max_response_bytes`` each body, ``retries`` the further attempts after a network
    error, HTTP 429 or 5xx."""

    amd_base_url: str = "https://kdsintf.amd.com"
    intel_base_url: str = "https://api.trustedservices.intel.com"
    intel_root_ca_crl_url: str = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
    timeout: float = 10.0
    max_response_bytes: int = MAX_RESPONSE_BYTES
    retries: int = 2
    retry_backoff: float = 0.5
    service_urls: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        urls = [(name, getattr(self, name)) for name in ("amd_base_url", "intel_base_url", "intel_root_ca_crl_url")]
        urls += [(f"service_urls[{service!r}]", url) for service, url in self.service_urls.items()]
        for name, url in urls:
            if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("https", "http"):
                raise CollateralError(f"collateral fetcher {name}: {url!r} is not an http(s) URL")
        if (
            not 0 < self.timeout <= 300
            or not 0 < self.max_response_bytes <= 64 * MAX_RESPONSE_BYTES
            or not 0 <= self.retries <= 10
        ):
            raise CollateralError("collateral fetcher: timeout, max_response_bytes or retries out of range")

    def url_for(self, service: str, default: str) -> str:
        """The base URL configured for ``service`` in ``service_urls``, else ``default``."""
        return self.service_urls.get(service, default).rstrip("/")


@dataclass(frozen=True)
class Fetched:
    """A vendor response: its URL, body and headers (names lowercase)."""

    url: str
    body: bytes
    headers: Mapping[str, str]

    def issuer_chain(self, header: str) -> bytes:
        """A PEM issuer chain header (URL-encoded, as Intel PCS sends it)."""
        value = self.headers.get(header.lower())
        if not value:
            raise CollateralFetchError(f"{self.url}: the response has no {header} header")
        return urllib.parse.unquote(value).encode("ascii", "replace")


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to http(s), never from https down to http."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        old, new = urllib.parse.urlsplit(req.full_url).scheme, urllib.parse.urlsplit(newurl).scheme
        if new not in ("http", "https") or (old == "https" and new != "https"):
            raise urllib.error.HTTPError(newurl, code, f"refused redirect to {new} URL", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class CollateralFetcher:
    """Asks the vendors' services for collateral, with bounded sizes and times (the URLs come
    from the platform packages' :class:`CollateralItem` fetch functions)."""

    def __init__(self, config: FetchConfig | None = None) -> None:
        self.config = config or FetchConfig()
        self._opener = urllib.request.build_opener(_SameSchemeRedirects())

    # transport

    def _once(self, url: str) -> Fetched:
        config = self.config
        deadline = time.monotonic() + config.timeout
        request = urllib.request.Request(url, headers={"User-Agent": "attestfl-collateral/1", "Accept": "*/*"})
        with self._opener.open(request, timeout=config.timeout) as response:
            status = getattr(response, "status", 200)
            if status != 200:
                raise CollateralFetchError(f"{url}: HTTP {status}")
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > config.max_response_bytes:
                raise CollateralFetchError(
                    f"{url}: the response is {length} bytes, over the {config.max_response_bytes}-byte limit"
                )
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise CollateralFetchError(f"{url}: no complete response within {config.timeout} s")
                chunk = response.read(min(64 * 1024, config.max_response_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > config.max_response_bytes:
                    raise CollateralFetchError(
                        f"{url}: the response is over the {config.max_response_bytes}-byte limit"
                    )
            if length is not None and length.isdigit() and size != int(length):  # the connection closed mid-body
                raise http.client.IncompleteRead(b"".join(chunks), int(length) - size)
            headers = {name.lower(): value for name, value in response.headers.items()}
        return Fetched(url, b"".join(chunks), headers)

    def get(self, url: str) -> Fetched:
        """GET ``url``: 200 with a bounded body, else :class:`CollateralFetchError` (after the
        configured retries for network errors, HTTP 429 and 5xx)."""
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            retry = False
            try:
                return self._once(url)
            except urllib.error.HTTPError as exc:
                retry = exc.code == 429 or exc.code >= 500
                error = CollateralFetchError(f"{url}: HTTP {exc.code} {exc.reason}")
            except CollateralFetchError:
                raise
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
                # refused, reset, timeout, a truncated body, an oversized header line, a bad URL
                retry = not isinstance(exc, ValueError)
                reason = getattr(exc, "reason", None) or exc
                error = CollateralFetchError(f"{url}: {reason}")
            if not retry or attempt + 1 == attempts:
                raise error
            time.sleep(self.config.retry_backoff * (2**attempt))
        raise CollateralFetchError(f"{url}: no attempt was made")  # pragma: no cover - attempts >= 1


# --- the store ------------------------------------------------------------------------------


@dataclass
class _File:
    stamp: tuple[int, int, int]
    checked: float
    value: Any = None
    problem: str | None = None
    sha256: bytes = b""


@dataclass(frozen=True)
class Lookup:
    """One piece of collateral: its parsed value when a fresh one was found, else ``None``;
    ``notes`` say why a candidate was not used (absent, stale, malformed, fetch failed)."""

    value: Any
    notes: tuple[str, ...] = ()


#: Whether a parsed document is fresh at a time under a maximum age: None, or why not.
Freshness = Callable[[Any, datetime, "timedelta | None"], "str | None"]


@dataclass(frozen=True)
class CollateralItem:
    """How to find, parse, judge and fetch one cached document: ``path`` relative to the
    cache (``<vendor>/...``), ``what`` it is in messages, ``limit`` its size in bytes,
    ``parse`` (raising :class:`~attestation.errors.AttestationError` when unusable),
    ``fresh`` (:func:`crl_fresh`, :func:`document_fresh`, :func:`always_fresh`), ``fetch``
    (the files a fetcher brings: ``{path: bytes, chain: bytes}``) and ``chain``, the issuer
    chain file that must be present beside it (the value is then ``(document, chain)``)."""

    path: str
    what: str
    limit: int
    parse: Callable[[bytes], Any]
    fresh: Freshness
    fetch: Callable[[CollateralFetcher], dict[str, bytes]] | None = None
    chain: str | None = None


def _window(
    what: str, issued: datetime, next_update: datetime | None, at: datetime, max_age: timedelta | None
) -> str | None:
    if at < issued:
        return f"{what} is not valid before {issued.isoformat()} (verification time {at.isoformat()})"
    if next_update is not None and at > next_update:
        return f"{what} expired at its next update {next_update.isoformat()} (verification time {at.isoformat()})"
    if max_age is not None and at - issued > max_age:
        return (
            f"{what} was issued {issued.isoformat()}, {at - issued} before the verification time, "
            f"older than the policy's max_collateral_age {max_age}"
        )
    return None


def crl_fresh(what: str) -> Freshness:
    """A CRL is fresh between its thisUpdate and nextUpdate, and no older than the maximum age."""

    def fresh(crl: Any, at: datetime, max_age: timedelta | None) -> str | None:
        return _window(what, crl.this_update, crl.next_update, at, max_age)

    return fresh


def document_fresh(what: str, attribute: str) -> Freshness:
    """A signed document (``document.<attribute>`` has ``issue_date`` and ``next_update``) is
    fresh between the two, and no older than the maximum age."""

    def fresh(document: Any, at: datetime, max_age: timedelta | None) -> str | None:
        content = getattr(document, attribute)
        return _window(what, content.issue_date, content.next_update, at, max_age)

    return fresh


def always_fresh(_value: Any, _at: datetime, _max_age: timedelta | None) -> str | None:
    """For what does not go stale (a certificate: its validity is checked with its chain)."""
    return None


def parse_crl_file(data: bytes) -> RevocationList:
    try:
        return parse_crl(data)
    except CertificateFormatError as exc:
        raise CollateralFormatError(f"not a CRL: {exc}") from exc


def parse_chain_file(data: bytes) -> tuple[Certificate, ...]:
    try:
        return tuple(parse_certificates(data))
    except CertificateFormatError as exc:
        raise CollateralFormatError(f"not a certificate chain: {exc}") from exc


def parse_certificate_file(data: bytes) -> Certificate:
    try:
        return parse_certificate(data)
    except CertificateFormatError as exc:
        raise CollateralFormatError(f"not a certificate: {exc}") from exc


class CollateralStore:
    """Collateral from a cache directory, optionally refreshed by ``fetcher`` (see the module
    docstring). Thread-safe; one store serves many appraisals.

    ``refetch_after``: after a fetch of a document failed or gave stale collateral, it is not
    asked for again for this long. ``recheck_after``: a cached file's ``stat`` is trusted for
    this long before it is looked at again."""

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        fetcher: CollateralFetcher | None = None,
        refetch_after: timedelta = timedelta(minutes=5),
        recheck_after: timedelta = timedelta(seconds=1),
    ) -> None:
        self.directory = Path(cache_dir)
        self.fetcher = fetcher
        if fetcher is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CollateralError(
                    f"cannot create the collateral cache {self.directory}: {exc.strerror or exc}"
                ) from exc
        if not self.directory.is_dir():
            raise CollateralError(f"{self.directory}: not a collateral cache directory")
        self.refetch_after = refetch_after.total_seconds()
        self.recheck_after = recheck_after.total_seconds()
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._parsed: OrderedDict[tuple[str, bytes], tuple[Any, str | None]] = OrderedDict()
        self._fetch_refused_until: dict[str, float] = {}
        self._bytes: OrderedDict[bytes, bytes] = OrderedDict()
        self._recording = threading.local()

    def recording(self) -> _Recording:
        """``with store.recording() as used:`` — the files this thread's appraisals used,
        ``{relative path: SHA-256}``: what an audit log keeps so an auditor can re-run the
        appraisal with exactly this collateral (:meth:`file_bytes` gives their bytes)."""
        return _Recording(self)

    def file_bytes(self, sha256: bytes) -> bytes | None:
        """The bytes of a collateral file this store read recently, by their SHA-256."""
        with self._lock:
            return self._bytes.get(sha256)

    def _used(self, relative: str, sha256: bytes) -> None:
        used = getattr(self._recording, "used", None)
        if used is not None and sha256:
            used[relative] = sha256

    def __repr__(self) -> str:
        return f"CollateralStore({str(self.directory)!r}, fetcher={'yes' if self.fetcher else 'no'})"

    # files

    def _stamp(self, relative: str) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.directory / relative)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _read(self, relative: str, what: str, limit: int, parse: Callable[[bytes], Any]) -> tuple[Any, str | None]:
        """(parsed value, None), (None, problem), or (None, None) when the file is absent."""
        now = time.monotonic()
        with self._lock:
            cached = self._files.get(relative)
            if cached is not None and now - cached.checked < self.recheck_after:
                if cached.value is not None:
                    self._used(relative, cached.sha256)
                return cached.value, cached.problem
        stamp = self._stamp(relative)
        if stamp is None:
            with self._lock:
                self._files.pop(relative, None)
            return None, None
        with self._lock:
            cached = self._files.get(relative)
            if cached is not None and cached.stamp == stamp:
                cached.checked = now
                if cached.value is not None:
                    self._used(relative, cached.sha256)
                return cached.value, cached.problem
        digest = b""
        value: Any
        problem: str | None
        try:
            data = self._file(relative, what, limit)
        except CollateralFormatError as exc:
            value, problem = None, str(exc)
        else:
            digest = hashlib.sha256(data).digest()
            with self._lock:
                self._bytes[digest] = data
                while len(self._bytes) > 256:
                    self._bytes.popitem(last=False)
            key = (what, digest)
            with self._lock:
                parsed = self._parsed.get(key)
            if parsed is None:
                try:
                    parsed = (parse(data), None)
                except AttestationError as exc:
                    parsed = (None, f"{relative} in the collateral cache is unusable: {exc}")
                with self._lock:
                    self._parsed[key] = parsed
                    while len(self._parsed) > 256:
                        self._parsed.popitem(last=False)
            value, problem = parsed
        with self._lock:
            self._files[relative] = _File(stamp, now, value, problem, digest)
        if value is not None:
            self._used(relative, digest)
        return value, problem

    def _file(self, relative: str, what: str, limit: int) -> bytes:
        return read_bounded(self.directory / relative, limit, what, CollateralFormatError)

    def _write(self, relative: str, data: bytes) -> None:
        path = self.directory / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError as exc:
            raise CollateralFetchError(f"cannot write {path}: {exc.strerror or exc}") from exc
        with self._lock:
            self._files.pop(relative, None)

    # one document

    def lookup(self, item: CollateralItem, at: datetime, max_age: timedelta | None = None) -> Lookup:
        """The fresh document ``item`` describes, from the cache or (with a fetcher) fetched
        again, or ``Lookup(None, notes)`` saying why there is none."""
        at = as_utc(at)
        value, why = self._judge(item, at, max_age)
        if why is None:
            return Lookup(value)
        notes = [why]
        if self.fetcher is not None and item.fetch is not None:
            refused_until = self._fetch_refused_until.get(item.path, 0.0)
            if time.monotonic() < refused_until:
                notes.append(
                    f"not fetched again: the last fetch of the {item.what} failed "
                    f"less than {int(self.refetch_after)} s ago"
                )
                return Lookup(None, tuple(notes))
            try:
                files = item.fetch(self.fetcher)
                main = files[item.path]
                item.parse(main)  # never write what does not parse
                for relative, data in files.items():
                    self._write(relative, data)
            except (AttestationError, KeyError) as exc:
                self._refuse_fetch(item.path)
                notes.append(f"fetching the {item.what} failed: {exc}")
                return Lookup(None, tuple(notes))
            value, why = self._judge(item, at, max_age, fresh_read=True)
            if why is None:
                return Lookup(value, (f"the {item.what} was fetched again: {notes[0]}",))
            self._refuse_fetch(item.path)
            notes.append(f"the {item.what} fetched again is not usable either: {why}")
        return Lookup(None, tuple(notes))

    def _refuse_fetch(self, path: str) -> None:
        """Do not fetch ``path`` again for ``refetch_after``; the table stays bounded (evidence
        names the VCEK looked up, so an attacker could otherwise grow it)."""
        now = time.monotonic()
        with self._lock:
            if len(self._fetch_refused_until) >= MAX_REFUSED_FETCHES:
                for key in [k for k, until in self._fetch_refused_until.items() if until <= now]:
                    del self._fetch_refused_until[key]
                while len(self._fetch_refused_until) >= MAX_REFUSED_FETCHES:
                    del self._fetch_refused_until[next(iter(self._fetch_refused_until))]
            self._fetch_refused_until[path] = now + self.refetch_after

    def _judge(
        self, item: CollateralItem, at: datetime, max_age: timedelta | None, *, fresh_read: bool = False
    ) -> tuple[Any, str | None]:
        if fresh_read:
            with self._lock:
                self._files.pop(item.path, None)
                if item.chain:
                    self._files.pop(item.chain, None)
        value, problem = self._read(item.path, item.what, item.limit, item.parse)
        if problem is not None:
            return None, problem
        if value is None:
            return None, f"the collateral cache has no {item.what} ({item.path})"
        stale = item.fresh(value, at, max_age)
        if stale is not None:
            return None, f"the cached {item.what} ({item.path}) is not used: {stale}"
        if item.chain is not None:
            chain, chain_problem = self._read(
                item.chain, f"issuer chain of the {item.what}", MAX_CERT_INPUT_BYTES, parse_chain_file
            )
            if chain is None:
                return (
                    None,
                    chain_problem
                    or f"the collateral cache has the {item.what} but not its issuer chain ({item.chain})",
                )
            return (value, chain), None
        return value, None


class _Recording:
    def __init__(self, store: CollateralStore) -> None:
        self.store = store
        self.used: dict[str, bytes] = {}

    def __enter__(self) -> dict[str, bytes]:
        self.previous = getattr(self.store._recording, "used", None)
        self.store._recording.used = self.used
        return self.used

    def __exit__(self, *exc: object) -> None:
        self.store._recording.used = self.previous


class LoggedCollateralStore(CollateralStore):
    """A store over collateral files given by content (``{relative path: bytes}``), no
    directory, no fetcher: how an auditor re-runs an appraisal with the collateral the
    aggregator logged for it."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.directory = Path("<logged collateral>")
        self.fetcher = None
        self.refetch_after = 0.0
        self.recheck_after = 3600.0
        self._lock = threading.Lock()
        self._files = {}
        self._parsed = OrderedDict()
        self._fetch_refused_until = {}
        self._bytes = OrderedDict()
        self._recording = threading.local()
        self._given = {str(k): bytes(v) for k, v in files.items()}

    def _stamp(self, relative: str) -> tuple[int, int, int] | None:
        data = self._given.get(relative)
        return None if data is None else (0, len(data), 0)

    def _file(self, relative: str, what: str, limit: int) -> bytes:
        data = self._given[relative]
        if len(data) > limit:
            raise CollateralFormatError(f"the logged {what} ({relative}) is larger than {limit} bytes")
        return data

    def __repr__(self) -> str:
        return f"LoggedCollateralStore({sorted(self._given)})"


__all__ = [
    "CollateralError",
    "CollateralFetchError",
    "CollateralFetcher",
    "CollateralItem",
    "CollateralStore",
    "FetchConfig",
    "Fetched",
    "LoggedCollateralStore",
    "Lookup",
    "always_fresh",
    "crl_fresh",
    "document_fresh",
    "parse_certificate_file",
    "parse_chain_file",
    "parse_crl_file",
]
