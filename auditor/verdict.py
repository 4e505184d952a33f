"""The auditor's verdict on a verified log, in words and as an exit status.

Four verdicts (:attr:`auditor.verify.Verification.verdict`), each with its own headline:

* ``valid`` (exit 0): intact, and every aggregator run's evidence passes the auditor's policy
  on real vendor roots;
* ``simulated`` (exit 0): intact and passing a policy that trusts the simulated TEE's root:
  never a plain VALID, since simulated evidence proves nothing about hardware;
* ``not_trusted`` (exit 4, :data:`attestation.errors.EXIT_NOT_TRUSTED`): intact (no entry altered
  since it was signed, every head signed by the key the evidence binds), but the auditor's policy
  does not trust the aggregator's evidence (a simulated root it does not list, a measurement or
  TCB it does not accept);
* ``invalid`` (exit 1): tampered, inconsistent or forged; the first bad entry is named.
"""

from __future__ import annotations

from attestation.errors import EXIT_NOT_TRUSTED, EXIT_OK, EXIT_REFUSED
from auditor.verify import Verification

EXIT_CODES = {"valid": EXIT_OK, "simulated": EXIT_OK, "not_trusted": EXIT_NOT_TRUSTED, "invalid": EXIT_REFUSED}
HEADLINES = {
    "valid": "VALID",
    "simulated": "SIMULATED",
    "not_trusted": "AUTHENTIC, NOT TRUSTED BY YOUR POLICY",
    "invalid": "INVALID",
}


def exit_code(result: Verification) -> int:
    return EXIT_CODES[result.verdict]


def counts(result: Verification) -> str:
    return (
        f"{result.records} entries, {len(result.heads)} signed tree heads, {len(result.runs)} aggregator "
        f"run(s), {len(result.admissions)} admission decision(s) re-run, {len(result.rounds)} round(s)"
    )


def simulated_detail(result: Verification) -> str:
    """Whose evidence is simulated, in a valid log."""
    if any(run.claims.get("simulated") for run in result.runs):
        return (
            "the log is intact and verifies under your policy, which trusts the simulated TEE's root; "
            "simulated evidence proves nothing about hardware"
        )
    sites = sorted({a.site for a in result.admissions if a.admitted and a.claims.get("simulated")})
    return (
        "the log is intact and verifies under your policy, but the logged admission policy admitted site(s) "
        f"{', '.join(sites)} on simulated evidence, which proves nothing about their hardware"
    )


def headline(result: Verification) -> str:
    """One line: the verdict in capitals, then what it rests on."""
    verdict = result.verdict
    if verdict == "valid":
        return f"VALID: {counts(result)}"
    if verdict == "simulated":
        return f"SIMULATED: {simulated_detail(result)}: {counts(result)}"
    if verdict == "not_trusted":
        return (
            f"AUTHENTIC, NOT TRUSTED BY YOUR POLICY: {'; '.join(result.not_trusted)}. The log is intact (no entry "
            "altered since it was signed), but your policy does not accept the aggregator's evidence"
            + (
                " (to audit a simulated deployment, pass a --policy whose trusted_simulated_roots lists that root)"
                if any(item.startswith("simulated root") for item in result.not_trusted)
                else ""
            )
        )
    first = result.first_tampering or result.first_problem
    return f"INVALID: first bad entry {first.index}: {first.check}: {first.message}" if first else "INVALID"


__all__ = ["EXIT_CODES", "HEADLINES", "counts", "exit_code", "headline", "simulated_detail"]
