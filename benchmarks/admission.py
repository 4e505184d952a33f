"""What an admission costs the aggregator, and what the trust fixes added to it (issue 13).

Measured in one process, interleaved, medians of warm calls:

* ``appraise_site`` of a simulated SEV-SNP and TDX site, in full (challenge MAC, identity proof,
  evidence, chains, the verifier's collateral, policy), with the collateral store warm;
* the identity proof alone (transcript and one Ed25519 verification), target <= 1 ms;
* the same appraisal with the store cold (a new store per call: every file read and parsed
  and every signature checked again), and with the evidence's own collateral as before the
  fix, to show that a warm store adds nothing measurable.

    python benchmarks/admission.py [--repeats N]

Prints JSON with the load average.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from timing import median_ms

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# This script's packages are importable once sys.path names the repository: imports after it (E402).
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402

from aggregator.challenges import ChallengeStore  # noqa: E402
from attestation.bundle import appraise_bundle  # noqa: E402
from attestation.bundle_abi import encode_bundle  # noqa: E402
from attestation.collateral import CollateralStore  # noqa: E402
from attestation.platforms.snp import NAME as SNP  # noqa: E402
from attestation.platforms.tdx import NAME as TDX  # noqa: E402
from attestation.policy import Policy  # noqa: E402
from enclave.attester import make_bundle  # noqa: E402
from enclave.identity import SiteIdentity  # noqa: E402
from enclave.keys import EnclaveKeys  # noqa: E402
from enclave.simulated.attester import SimulatedSnpAttester, SimulatedTdxAttester  # noqa: E402
from enclave.simulated.collateral import write_simulated_collateral  # noqa: E402
from enclave.simulated.pki import load_or_create  # noqa: E402
from protocol.admission import AdmissionPolicy, IdentityProof, SiteRule, appraise_site  # noqa: E402
from protocol.formulas import admission_nonce, identity_transcript  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="attestfl-admission-bench-"))
    vendor = work / "vendor"
    roots = frozenset(load_or_create(vendor).trusted_root_fingerprints().values())
    write_simulated_collateral(vendor, work / "collateral")
    store = CollateralStore(work / "collateral")
    aggregator = EnclaveKeys().public
    at = datetime.now(UTC)
    policy = Policy(trusted_simulated_roots=roots, require_collateral=True)
    results: dict[str, object] = {}
    for platform, attester in ((SNP, SimulatedSnpAttester(vendor)), (TDX, SimulatedTdxAttester(vendor))):
        results[platform] = bench_platform(attester, policy, store, aggregator, at, work, args.repeats)
    print(
        json.dumps(
            {
                "benchmark": "admission",
                "results": results,
                "targets": {"identity_proof_ms": 1.0},
                "load_average": os.getloadavg(),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


def bench_platform(
    attester: Any, policy: Policy, store: CollateralStore, aggregator: Any, at: datetime, work: Path, repeats: int
) -> dict[str, float]:
    """The admission timings of one platform's simulated evidence (median milliseconds)."""
    identity = SiteIdentity.generate("site-a")
    admission = AdmissionPolicy(
        sites={"site-a": SiteRule(frozenset({SNP, TDX}), identity_keys=frozenset({identity.public}))},
        attestation=policy,
        collateral=store,
    )
    challenges = ChallengeStore(timedelta(minutes=5))
    keys = EnclaveKeys()
    challenge, _ = challenges.issue("site-a")
    bundle = make_bundle(attester, keys, admission_nonce("site-a", challenge))
    evidence = encode_bundle(bundle)
    aggregator_evidence = os.urandom(32)
    proof = IdentityProof.signed(
        identity,
        site_id="site-a",
        challenge=challenge,
        evidence=evidence,
        site_keys=keys.public,
        aggregator_keys=aggregator,
        aggregator_evidence_sha256=aggregator_evidence,
    )

    def admit(policy_: AdmissionPolicy = admission) -> None:
        appraisal = appraise_site(
            policy_,
            site_id="site-a",
            challenge_reason=None,
            challenge=challenge,
            x25519=keys.public.x25519,
            ed25519=keys.public.ed25519,
            evidence_format="bundle",
            evidence=evidence,
            app_attest_key_id=b"",
            identity=proof,
            aggregator=aggregator,
            at=at,
        )
        assert appraisal.admitted, appraisal.reasons

    def identity_only() -> None:
        transcript_ = identity_transcript(
            site_id="site-a",
            challenge=challenge,
            evidence_sha256=hashlib.sha256(evidence).digest(),
            site_x25519=keys.public.x25519,
            site_ed25519=keys.public.ed25519,
            aggregator_x25519=aggregator.x25519,
            aggregator_ed25519=aggregator.ed25519,
            aggregator_evidence_sha256=aggregator_evidence,
        )
        Ed25519PublicKey.from_public_bytes(identity.public).verify(proof.signature, transcript_)

    def cold() -> None:
        admit(
            AdmissionPolicy(sites=admission.sites, attestation=policy, collateral=CollateralStore(work / "collateral"))
        )

    def own_collateral() -> None:  # the behaviour before the fix: the evidence's own collateral
        assert appraise_bundle(
            bundle, expected_nonce=admission_nonce("site-a", challenge), policy=policy, at=at
        ).accepted

    return {
        "admission_warm_store": median_ms(admit, repeats),
        "identity_proof_only": median_ms(identity_only, repeats),
        "admission_cold_store": median_ms(cold, max(20, repeats // 10)),
        "evidence_with_its_own_collateral_before_the_fix": median_ms(own_collateral, repeats),
    }


if __name__ == "__main__":
    main()
