"""The audit log as the aggregator's event sink (:class:`aggregator.service.EventSink`).

:class:`AuditLog` appends every event the service and the rounds record to the
:class:`~aggregator.audit.log.LogStore` (each with a signed tree head, fsynced before
``record`` returns) and forwards it to the structured log as well.

A run begins with :meth:`AuditLog.begin`:

1. ``aggregator_start`` (empty log) or ``handover`` (a restarted aggregator continuing an
   existing log): the enclave's own evidence bundle, made for the nonce
   :func:`~aggregator.audit.log.key_binding_nonce` of the log so far, binding this run's
   Ed25519 log key to the TEE and to the log's history; a handover also carries the
   previous run's last signed tree head;
2. ``config``: the aggregator.toml bytes, the admission policy in full
   (:func:`~protocol.auditlog.records.admission_policy_record`) and the task.

Every later head is signed by this run's key; the verifier accepts a head only from the key
bound by the latest start/handover entry it covers.

**The contract of** :meth:`AuditLog.record`: ``record`` returns only when the entry and its
head are durable (written and fsynced); if it raises, the event must be treated as not
having happened. So the caller records *before* it applies the state change the event
describes (admits the site, signs and returns the receipt, publishes the round's model,
seals the checkpoint) and applies nothing when ``record`` raises. After a failed append the
log is rolled back to its last acknowledged entry and refuses every later ``record`` with
:class:`~aggregator.audit.log.AuditLogUnavailable` (fail stop) until it is reopened: the
aggregator stops serving and exits; a restart (once the disk has room again) reopens the
log, recovers any torn tail and continues it with a ``handover`` entry.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from aggregator.audit.log import AuditLogError, AuditLogUnavailable, LogStore, TreeHead, key_binding_nonce
from attestation.bundle_abi import encode_bundle
from enclave.attester import Attester, GpuAttester, make_bundle
from enclave.keys import EnclaveKeys
from protocol.auditlog.records import LOG_FORMAT, admission_policy_record, plain

LOG = logging.getLogger("attestfl.aggregator.audit")


class AuditLog:
    """Event sink writing the tamper-evident log; forwards events to ``forward`` too."""

    def __init__(
        self,
        directory: str | Path,
        keys: EnclaveKeys,
        *,
        forward: Any | None = None,
        fsync: bool = True,
        clock: Any = time.time,
    ) -> None:
        self.store = LogStore(directory, fsync=fsync)
        self.keys = keys
        self.forward = forward
        self.clock = clock
        self.failed: str | None = None

    @property
    def directory(self) -> Path:
        return self.store.directory

    @property
    def last_head(self) -> TreeHead | None:
        return self.store.last_head

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    @property
    def available(self) -> bool:
        """False once an append failed: every later one is refused until the log is reopened."""
        return self.store.failed is None

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from the size of a head a site kept to ``new_size``
        (default: that of :attr:`last_head`); ValueError if a size is out of range."""
        return self.store.consistency_proof(old_size, new_size)

    def append(self, kind: str, fields: dict[str, Any]) -> int:
        """Append one entry; returns only when it and its head are durable.

        :class:`AuditLogUnavailable` if this or an earlier append failed (fail stop);
        :class:`AuditLogError` if the entry cannot be encoded (nothing written)."""
        index, _ = self.store.append(
            kind, self._now_ms(), plain(fields), key=self.keys.public.ed25519, sign=self.keys.sign
        )
        return index

    def begin(
        self,
        attester: Attester,
        *,
        gpu: GpuAttester | None = None,
        tee: str = "",
        config_raw: bytes = b"",
        admission: Any = None,
        task: dict[str, Any] | None = None,
        build: str = "attestfl",
    ) -> None:
        """Log this run's evidence (start or handover) and its configuration."""
        previous = self.store.last_head
        size = self.store.size
        nonce = key_binding_nonce(size, self.store.root())
        bundle = make_bundle(attester, self.keys, nonce, gpu=gpu)
        fields: dict[str, Any] = {
            "evidence": encode_bundle(bundle),
            "ed25519": self.keys.public.ed25519,
            "x25519": self.keys.public.x25519,
            "tee": tee,
            "build": build,
            "recovered": list(self.store.recovered),
        }
        if previous is not None:
            fields["previous_head"] = previous.to_cbor_map()
        self.append("handover" if size else "aggregator_start", fields)
        config: dict[str, Any] = {
            "log_format": LOG_FORMAT,
            "aggregator_toml": config_raw,
            "aggregator_toml_sha256": hashlib.sha256(config_raw).hexdigest(),
        }
        if admission is not None:
            config["admission"] = admission_policy_record(admission)
        if task is not None:
            config["task"] = task
        self.append("config", config)

    def record(self, kind: str, **fields: Any) -> None:
        """Log an event; returns only when it is durable. If it raises (:class:`AuditLogError`)
        the event must be treated as not having happened (module docstring); after
        :class:`AuditLogUnavailable` every later call raises it too."""
        try:
            self.append(kind, fields)
        except AuditLogError as exc:
            self.failed = f"{kind}: {exc}"
            LOG.error("audit log append failed", extra={"fields": {"event": kind, "error": str(exc)}})
            if self.forward is not None:
                self.forward.record(
                    "audit_log_failed", event=kind, error=str(exc), fail_stop=isinstance(exc, AuditLogUnavailable)
                )
            raise
        if self.forward is not None:
            self.forward.record(kind, **fields)

    def close(self) -> None:
        self.store.close()
