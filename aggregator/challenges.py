"""The aggregator's admission challenges: what it hands out in ``GetChallenge`` and checks
first in ``Admit``."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from datetime import timedelta
from typing import Any

from attestation.findings import Reason

CHALLENGE_LABEL = b"attestfl/v1/admission-challenge\x00"
CHALLENGE_BYTES = 56  # 16 random || 8 expiry (unix ms, big-endian) || 32 HMAC-SHA256
MAX_USED_CHALLENGES = 65536


class ChallengeStore:
    """Stateless, single-use, expiring challenges.

    A challenge is ``random(16) || expiry || HMAC(key, label || site id || random || expiry)``
    under a key that lives only in this process. Any site id gets one of the same form, so the
    answer says nothing about the roster, and a flood of requests stores nothing: only a
    challenge that is *presented* with a valid MAC enters a used-set, until it expires (single
    use). The MAC and expiry are checked before anything else in ``Admit``."""

    def __init__(self, ttl: timedelta, limit: int = MAX_USED_CHALLENGES, clock: Any = time.time) -> None:
        self._ttl = ttl.total_seconds()
        self._limit = limit
        self._clock = clock
        self._key = os.urandom(32)
        self._used: dict[bytes, float] = {}

    def _mac(self, site_id: str, body: bytes) -> bytes:
        return hmac.new(self._key, CHALLENGE_LABEL + site_id.encode() + b"\x00" + body, hashlib.sha256).digest()

    def issue(self, site_id: str) -> tuple[bytes, float]:
        expires = self._clock() + self._ttl
        body = os.urandom(16) + struct.pack(">Q", int(expires * 1000))
        return body + self._mac(site_id, body), expires

    def consume(self, challenge: bytes, site_id: str) -> Reason | None:
        """Check the challenge (MAC, expiry, not used) and mark it used; say why it is unusable."""
        challenge = bytes(challenge)
        if len(challenge) != CHALLENGE_BYTES or not hmac.compare_digest(
            self._mac(site_id, challenge[:24]), challenge[24:]
        ):
            return Reason(
                "admission.challenge",
                "the challenge was not issued by this aggregator to this site id (forged, "
                "for another site, or from before a restart)",
            )
        now = self._clock()
        expires = struct.unpack(">Q", challenge[16:24])[0] / 1000
        if now > expires:
            return Reason("admission.challenge", "the challenge expired")
        if challenge in self._used:
            return Reason("admission.challenge", "the challenge was already used (replayed)")
        if len(self._used) >= self._limit:
            self._used = {c: e for c, e in self._used.items() if e >= now}
            if len(self._used) >= self._limit:
                return Reason("admission.challenge", "too many admissions in progress; retry with a new challenge")
        self._used[challenge] = expires
        return None
