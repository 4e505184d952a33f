"""A hierarchical federation's audit logs checked together (docs/hierarchy.md).

Each log is first verified on its own (:func:`auditor.verify.verify_log`). Then the links
between the levels, from what the logs hold (nothing else is trusted):

- ``tree.parent_key``: each leaf joined a root whose key is one of the root log's aggregator keys;
- ``tree.forward``: each partial aggregate a leaf forwarded (``parent_forward``) is an update the
  root logged as accepted from that leaf (round, attempt, SHA-256, weight), and the root's receipt
  in the leaf's log is signed by that root key over exactly those values;
- ``tree.weight``: a forward's weight is the sum of the weights of the leaf's round's participants;
- ``tree.model``: each next model a leaf took (``parent_model``) is the model the root's round
  committed, and the model the leaf's own round committed; every round a leaf committed has one;
- ``tree.admitted``: the root admitted no site but the leaves given (``--leaf``).

A problem names its check id, the log and the entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation.policy import Policy
from auditor.verify import Verification, verify_log


@dataclass(frozen=True)
class TreeProblem:
    check: str
    log: str
    index: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.log}" + (f" entry {self.index}" if self.index is not None else "")
        return f"{self.check}: {where}: {self.message}"


@dataclass
class TreeVerification:
    root: Verification
    leaves: list[Verification]
    problems: list[TreeProblem] = field(default_factory=list)

    @property
    def logs_valid(self) -> bool:
        return self.root.valid and all(leaf.valid for leaf in self.leaves)

    @property
    def valid(self) -> bool:
        return self.logs_valid and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "logs": {
                str(v.directory): {"valid": v.valid, "problems": [str(p) for p in v.problems[:20]]}
                for v in (self.root, *self.leaves)
            },
            "problems": [str(p) for p in self.problems],
        }


def _entries(result: Verification, kind: str) -> list[Any]:
    return [entry for entry in result.entries if entry.kind == kind]


def _receipt_signed(receipt: dict[str, Any], key_hex: str) -> bool:
    from enclave.keys import verify_enclave_signature
    from protocol.formulas import receipt_message

    try:
        message = receipt_message(
            round_number=int(receipt["round"]),
            attempt=int(receipt["attempt"]),
            site_id=str(receipt["site"]),
            update_sha256=bytes.fromhex(receipt["update_sha256"]),
            weight=float(receipt["weight"]),
            accepted_unix_ms=int(receipt["accepted_unix_ms"]),
            session_id=bytes.fromhex(receipt["session"]),
            call=int(receipt["call"]),
        )
        return verify_enclave_signature(bytes.fromhex(key_hex), bytes.fromhex(receipt["signature"]), message)
    except (KeyError, TypeError, ValueError):
        return False


def verify_tree(root_dir: str | Path, leaf_dirs: list[str | Path], policy: Policy | None = None) -> TreeVerification:
    """Verify the root's log, each leaf's log, and the links between them (module docstring)."""
    root = verify_log(root_dir, policy)
    result = TreeVerification(root, [verify_log(directory, policy) for directory in leaf_dirs])
    root_name = str(root.directory)
    root_keys = {run.key for run in root.runs}
    accepted = {
        (e.fields.get("site"), e.fields.get("round"), e.fields.get("attempt")): e
        for e in _entries(root, "update_accepted")
    }
    root_models = {e.fields.get("round"): e.fields.get("model_sha256") for e in _entries(root, "round")}
    leaf_sites: set[str] = set()
    for leaf in result.leaves:
        name = str(leaf.directory)

        def problem(check: str, index: int | None, message: str, log: str = name) -> None:
            result.problems.append(TreeProblem(check, log, index, message))

        joined = _entries(leaf, "parent_joined")
        if not joined:
            problem("tree.parent_key", None, "no parent_joined entry: this is not a leaf's log")
            continue
        keys: set[str] = set()
        for entry in joined:
            leaf_sites.add(str(entry.fields.get("site")))
            key = str(entry.fields.get("parent_ed25519"))
            keys.add(key)
            if key not in root_keys:
                problem("tree.parent_key", entry.index, f"joined a root with key {key[:16]}..., not in the root's log")
        rounds = {e.fields.get("round"): e.fields for e in _entries(leaf, "round")}
        for entry in _entries(leaf, "parent_forward"):
            f = entry.fields
            site = str(joined[0].fields.get("site"))
            receipt = f.get("receipt") or {}
            root_entry = accepted.get((site, f.get("round"), f.get("attempt")))
            if root_entry is None:
                problem(
                    "tree.forward",
                    entry.index,
                    f"the root's log has no accepted update of {site!r} for round {f.get('round')} "
                    f"attempt {f.get('attempt')}",
                )
            elif (root_entry.fields.get("update_sha256"), root_entry.fields.get("weight")) != (
                f.get("partial_sha256"),
                f.get("weight"),
            ):
                problem(
                    "tree.forward",
                    entry.index,
                    f"round {f.get('round')}: the root accepted another update or weight than the leaf forwarded "
                    f"(root entry {root_entry.index})",
                )
            if receipt.get("update_sha256") != f.get("partial_sha256") or not any(
                _receipt_signed(receipt, key) for key in keys
            ):
                problem("tree.forward", entry.index, "the root's receipt is not signed over this forward")
            own = rounds.get(f.get("round"))
            if own is not None:
                total = sum(float(p.get("weight", 0)) for p in (own.get("participants") or {}).values())
                if abs(total - float(f.get("weight") or 0)) > 1e-6 * max(1.0, total):
                    problem(
                        "tree.weight",
                        entry.index,
                        f"round {f.get('round')}: forwarded weight {f.get('weight')}, its participants weigh {total:g}",
                    )
        models = {e.fields.get("round"): e for e in _entries(leaf, "parent_model")}
        for round_number, own in rounds.items():
            if not isinstance(round_number, int):
                continue
            taken = models.get(round_number + 1)
            if taken is None:
                problem("tree.model", None, f"round {round_number} was committed without a parent_model entry")
                continue
            digest = taken.fields.get("model_sha256")
            if own.get("model_sha256") != digest:
                problem("tree.model", taken.index, f"round {round_number}: the leaf committed another model")
            if root_models.get(round_number) != digest:
                problem("tree.model", taken.index, f"round {round_number}: not the model the root's round committed")
    others = sorted({d.site for d in root.admissions if d.admitted} - leaf_sites)
    if others:
        result.problems.append(
            TreeProblem(
                "tree.admitted",
                root_name,
                None,
                f"the root admitted site(s) whose leaf logs were not given: {', '.join(others)}",
            )
        )
    return result
