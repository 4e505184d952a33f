"""The session credential: an IETF RATS EAR (EAT Attestation Result) as a JWT signed by the
enclave's attested Ed25519 key (``alg: EdDSA``).

Any relying party that trusts the aggregator's evidence (which binds that Ed25519 key) can
check the credential with a standard JWT library, e.g. PyJWT::

    jwt.decode(token, key=Ed25519PublicKey.from_public_bytes(aggregator_ed25519),
               algorithms=["EdDSA"], audience="attestfl-aggregator")

Claims (draft-ietf-rats-ear): ``eat_profile``, ``iat``, ``exp``, ``ear.verifier-id``,
``submods`` with one entry per appraised site (``ear.status``: ``affirming`` or
``warning``; ``ear.appraisal-policy-id``; ``ear.veraison.annotated-evidence``: the verified
claims that matter). attestfl adds ``aud``, ``jti`` and the ``attestfl.*`` claims that tie
it to the session: session id, site id and the site's attested public keys.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from attestation.errors import AttestflError

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
AUDIENCE = "attestfl-aggregator"
STATUSES = ("affirming", "warning", "contraindicated", "none")


class CredentialError(AttestflError):
    """A session credential is missing, malformed, expired, or not the enclave's."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SessionClaims:
    session_id: bytes
    site_id: str
    site_x25519: bytes
    site_ed25519: bytes
    status: str
    expires: datetime


def issue_credential(
    sign: Callable[[bytes], bytes],
    *,
    key_id: str,
    session_id: bytes,
    site_id: str,
    site_x25519: bytes,
    site_ed25519: bytes,
    status: str,
    policy_id: str,
    annotated_claims: dict[str, Any],
    now: datetime,
    ttl: timedelta,
    build: str,
) -> str:
    """A compact JWS over the EAR claims, signed with ``sign`` (the enclave's Ed25519 key:
    the private key stays inside :class:`enclave.keys.EnclaveKeys`)."""
    if status not in STATUSES:
        raise CredentialError(f"unknown EAR status {status!r}")
    issued = int(now.timestamp())
    payload = {
        "eat_profile": EAR_PROFILE,
        "iat": issued,
        "exp": issued + int(ttl.total_seconds()),
        "aud": AUDIENCE,
        "jti": _b64url(os.urandom(16)),
        "ear.verifier-id": {"developer": "attestfl", "build": build},
        "submods": {
            site_id: {
                "ear.status": status,
                "ear.appraisal-policy-id": policy_id,
                "ear.veraison.annotated-evidence": annotated_claims,
            }
        },
        "attestfl.session": session_id.hex(),
        "attestfl.site": site_id,
        "attestfl.site-keys": {"x25519": site_x25519.hex(), "ed25519": site_ed25519.hex()},
    }
    header = {"alg": "EdDSA", "typ": "JWT", "kid": key_id}
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    )
    return signing_input + "." + _b64url(sign(signing_input.encode("ascii")))


class ClockSkewError(CredentialError):
    """The credential's times are further from this clock than the tolerated skew."""


#: How far the aggregator's and a site's clocks may disagree (``[site] max_clock_skew``).
DEFAULT_MAX_CLOCK_SKEW = timedelta(seconds=60)


def verify_credential(
    token: str,
    ed25519_public: bytes,
    *,
    now: datetime,
    max_bytes: int = 16 * 1024,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
) -> SessionClaims:
    """Check signature, audience, expiry and shape; return the session binding it carries.

    The aggregator's clock and this one may disagree by up to ``max_clock_skew``: a credential
    issued that far in the future (by this clock) is accepted; beyond it the error says
    "clock skew", not "not signed"."""
    if not isinstance(token, str) or not token or len(token) > max_bytes:
        raise CredentialError("no usable session credential")
    try:
        claims = jwt.decode(
            token,
            key=Ed25519PublicKey.from_public_bytes(ed25519_public),
            algorithms=["EdDSA"],
            audience=AUDIENCE,
            options={"require": ["exp", "iat", "aud", "jti"], "verify_exp": False, "verify_iat": False},
        )
    except (jwt.PyJWTError, ValueError) as exc:
        raise CredentialError(f"session credential rejected: {exc}") from exc
    try:
        issued = datetime.fromtimestamp(int(claims["iat"]), tz=now.tzinfo)
        expires = datetime.fromtimestamp(int(claims["exp"]), tz=now.tzinfo)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise CredentialError(f"session credential times are unusable: {exc}") from None
    ahead = (issued - now).total_seconds()
    if ahead > max_clock_skew.total_seconds():
        raise ClockSkewError(
            f"clock skew: the aggregator issued the credential at {issued.isoformat()}, {ahead:.0f} s ahead of "
            f"this clock (tolerated: {max_clock_skew.total_seconds():.0f} s, [site] max_clock_skew); "
            "synchronise the clocks (NTP)"
        )
    if now >= expires + max_clock_skew:
        raise CredentialError(f"session credential expired at {expires.isoformat()}")
    try:
        site_id = str(claims["attestfl.site"])
        status = claims["submods"][site_id]["ear.status"]
        keys = claims["attestfl.site-keys"]
        return SessionClaims(
            session_id=bytes.fromhex(claims["attestfl.session"]),
            site_id=site_id,
            site_x25519=bytes.fromhex(keys["x25519"]),
            site_ed25519=bytes.fromhex(keys["ed25519"]),
            status=str(status),
            expires=expires,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CredentialError(f"session credential lacks attestfl claims: {exc}") from exc
