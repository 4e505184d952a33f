"""The tamper-evident audit log: RFC 9162 Merkle tree, heads signed in the TEE, offline verification.

* :mod:`.merkle` — tree hashing, inclusion and consistency proofs;
* :mod:`.log` — storage on untrusted disk, crash-safe append and recovery;
* :mod:`.events` — :class:`~.events.AuditLog`, the aggregator's event sink;
* :mod:`.verify` — the auditor's offline re-verification;
* :mod:`.report` — the self-contained HTML report;
* :mod:`.cli` — ``attestfl audit verify|prove|head|report``.
"""
