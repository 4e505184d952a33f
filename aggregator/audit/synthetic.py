"""A federation's audit log written without a network: the real :class:`AuditLog`, real
simulated-TEE evidence for the aggregator and every site, the real admission function and
real receipt signatures, in the order the service and the rounds record them. For tests,
benchmarks and demos of the verifier; never for production (it trusts a simulated root).

    fed = SyntheticFederation(log_dir, sim_dir, sites=["a", "b"])
    fed.admit("a"); fed.admit("b")
    fed.round(1)              # both upload, report metrics, the round closes
    fed.restart()             # new enclave keys: a handover entry
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator.audit.events import AuditLog
from attestation.bundle_abi import encode_bundle
from attestation.policy import Policy
from enclave.attester import make_bundle
from enclave.identity import SiteIdentity
from enclave.keys import EnclaveKeys
from enclave.simulated.attester import SimulatedSnpAttester
from enclave.simulated.pki import load_or_create
from protocol.admission import AdmissionPolicy, IdentityProof, SiteRule, appraise_site
from protocol.formulas import admission_nonce, receipt_message


class SyntheticFederation:
    def __init__(
        self, log_dir: str | Path, sim_dir: str | Path, *, sites: list[str], fsync: bool = False, seed: int = 0
    ) -> None:
        self.log_dir = Path(log_dir)
        self.sim_dir = Path(sim_dir)
        self.fsync = fsync
        self.random = random.Random(seed)
        roots = load_or_create(self.sim_dir).trusted_root_fingerprints()
        self.policy_text = (
            "trusted_simulated_roots = [" + ", ".join(f'"{fp}"' for fp in sorted(roots.values())) + "]\n"
        ).encode()
        self.identities = {s: SiteIdentity.generate(s) for s in sites}
        self.admission = AdmissionPolicy(
            sites={
                s: SiteRule(
                    platforms=frozenset(roots), identity_keys=frozenset({self.identities[s].public}), max_weight=1000.0
                )
                for s in sites
            },
            attestation=Policy.from_toml(self.policy_text.decode()),
            policy_id="sha256:" + hashlib.sha256(self.policy_text).hexdigest(),
            policy_text=self.policy_text,
        )
        self.config_raw = b'[aggregator]\ntee = "simulated-snp"\n# synthetic federation\n'
        self.aggregator_attester = SimulatedSnpAttester(self.sim_dir, config=self.config_raw)
        self.site_attester = SimulatedSnpAttester(self.sim_dir)
        self.debug_attester = SimulatedSnpAttester(self.sim_dir, debug=True)
        self.site_keys = {s: EnclaveKeys() for s in sites}
        self.sites = list(sites)
        self.log: AuditLog | None = None
        self.start()

    def auditor_policy(self) -> Policy:
        return Policy.from_toml(self.policy_text.decode())

    def start(self) -> None:
        self.keys = EnclaveKeys()
        self.log = AuditLog(self.log_dir, self.keys, fsync=self.fsync)
        self.log.begin(
            self.aggregator_attester,
            tee="simulated-snp",
            config_raw=self.config_raw,
            admission=self.admission,
            task={"rounds": 0, "strategy": "fedavg", "min_sites": 1},
        )

    def restart(self) -> None:
        assert self.log is not None
        self.log.close()
        self.start()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def admit(self, site: str, *, debug: bool = False, claim_admitted: bool | None = None) -> bool:
        """Appraise the site's fresh evidence and log the decision (``claim_admitted``: log this
        verdict instead, with no reasons: an operator lying in the log)."""
        assert self.log is not None
        challenge = os.urandom(32)
        keys = self.site_keys[site]
        bundle = make_bundle(
            self.debug_attester if debug else self.site_attester, keys, admission_nonce(site, challenge)
        )
        evidence = encode_bundle(bundle)
        now = datetime.now(UTC)
        aggregator_evidence = hashlib.sha256(b"synthetic aggregator evidence").digest()
        identity = IdentityProof.signed(
            self.identities[site],
            site_id=site,
            challenge=challenge,
            evidence=evidence,
            site_keys=keys.public,
            aggregator_keys=self.keys.public,
            aggregator_evidence_sha256=aggregator_evidence,
        )
        appraisal = appraise_site(
            self.admission,
            site_id=site,
            challenge_reason=None,
            challenge=challenge,
            x25519=keys.public.x25519,
            ed25519=keys.public.ed25519,
            evidence_format="bundle",
            evidence=evidence,
            app_attest_key_id=b"",
            identity=identity,
            aggregator=self.keys.public,
            at=now,
        )
        admitted = appraisal.admitted if claim_admitted is None else claim_admitted
        reasons = [str(r) for r in appraisal.reasons] if claim_admitted is None else []
        self.log.record(
            "admission",
            site=site,
            admitted=admitted,
            reasons=reasons,
            platform=appraisal.platform,
            evidence_format="bundle",
            evidence_sha256=hashlib.sha256(evidence).hexdigest(),
            evidence=evidence,
            policy_id=self.admission.policy_id,
            claims=appraisal.claims,
            challenge=challenge,
            x25519=keys.public.x25519,
            ed25519=keys.public.ed25519,
            app_attest_key_id=b"",
            identity_public=identity.public,
            identity_signature=identity.signature,
            identity_certificate=b"",
            aggregator_evidence_sha256=aggregator_evidence,
            aggregator_x25519=self.keys.public.x25519,
            aggregator_ed25519=self.keys.public.ed25519,
            at=now.isoformat(),
        )
        if admitted:
            self.log.record(
                "session",
                site=site,
                session=os.urandom(16).hex(),
                expires=now.isoformat(),
                site_x25519=keys.public.x25519.hex(),
                site_ed25519=keys.public.ed25519.hex(),
            )
        return admitted

    def upload(self, site: str, round_number: int, weight: float | None = None) -> dict[str, Any]:
        assert self.log is not None
        digest = hashlib.sha256(os.urandom(64)).digest()
        weight = float(weight if weight is not None else self.random.randint(10, 1000))
        accepted_ms = int(time.time() * 1000)
        session, call = os.urandom(16), self.random.randint(1, 1000)
        signature = self.keys.sign(
            receipt_message(
                round_number=round_number,
                attempt=1,
                site_id=site,
                update_sha256=digest,
                weight=weight,
                accepted_unix_ms=accepted_ms,
                session_id=session,
                call=call,
            )
        )
        self.log.record(
            "update_accepted",
            site=site,
            round=round_number,
            attempt=1,
            update_sha256=digest.hex(),
            weight=weight,
            accepted_unix_ms=accepted_ms,
            session=session.hex(),
            call=call,
            receipt_signature=signature.hex(),
        )
        return {"weight": weight, "update_sha256": digest.hex(), "norm_before_clip": None}

    def round(
        self,
        round_number: int,
        sites: list[str] | None = None,
        *,
        metrics: bool = True,
        epsilon: float | None = None,
        model_sha256: str | None = None,
    ) -> str:
        """Uploads, metrics and the round entry; returns the model digest logged (``epsilon``:
        log DP parameters and this epsilon, as a DP task does)."""
        assert self.log is not None
        participants = {s: self.upload(s, round_number) for s in (sites or self.sites)}
        if metrics:
            for site in participants:
                self.log.record(
                    "metrics",
                    site=site,
                    round=round_number,
                    metrics={"loss": self.random.random(), "accuracy": self.random.random()},
                    examples=self.random.randint(10, 1000),
                )
        model = model_sha256 or hashlib.sha256(os.urandom(32)).hexdigest()
        dp = None if epsilon is None else {"clip_norm": 1.0, "noise_multiplier": 1.1, "delta": 1e-5}
        self.log.record(
            "round",
            round=round_number,
            attempt=1,
            participants=participants,
            model_sha256=model,
            strategy="fedavg",
            clip_norm=None if dp is None else 1.0,
            dp=dp,
            epsilon=epsilon,
            aggregation_seconds=0.001,
        )
        return model


def write_demo_log(
    log_dir: Path, sim_dir: Path | None = None, *, sites: int = 3, rounds: int = 3
) -> SyntheticFederation:
    sim_dir = sim_dir or Path(tempfile.mkdtemp(prefix="attestfl-sim-"))
    fed = SyntheticFederation(log_dir, sim_dir, sites=[f"site-{i}" for i in range(sites)])
    for site in fed.sites:
        fed.admit(site)
    for r in range(1, rounds + 1):
        fed.round(r)
    fed.close()
    return fed
