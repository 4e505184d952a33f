"""The tamper-evident audit log: RFC 9162 Merkle tree, heads signed in the TEE, offline verification.

* :mod:`.merkle` — tree hashing, inclusion and consistency proofs;
* :mod:`.heads` — signed tree heads and the sites' consistency check (no aggregator imports);
* :mod:`.log` — storage on untrusted disk, fail-stop append, crash recovery;
* :mod:`.events` — :class:`~.events.AuditLog`, the aggregator's event sink;
* :mod:`.verify` — the auditor's offline re-verification;
* :mod:`.report` — the self-contained HTML report;
* :mod:`.cli` — ``attestfl audit verify|prove|head|report``.
"""
