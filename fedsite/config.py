"""``site.toml``: a site's file.

site.toml::

    [site]
    id = "hospital-a"
    aggregator = "aggregator.example.org:7443"
    tee = "auto"                       # how this site attests itself (as above)
    simulated_dir = "sim-tee"
    policy = "aggregator-policy.toml"  # attestation policy for the aggregator's evidence:
                                       # trusted roots, pinned measurement(s) (required), TCB minima
    identity = "identity.sealed"       # the sealed identity key `attestfl site enroll` writes
    identity_certificate = "site.crt"  # optional: its certificate under the organisation CA
    INSECURE_accept_any_aggregator = false  # run with a policy that pins no measurement (never in production)
    max_clock_skew = "60s"             # how far this site's and the aggregator's clocks may disagree
    state_dir = "site-state"           # receipts.jsonl and the newest audit tree head seen
    [data]                              # for `attestfl site run` with the demo trainer
    ...

Relative paths are relative to the file's directory. The rules every file follows (types,
bounds, error lines): :mod:`protocol.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from attestation.errors import PolicyError
from attestation.policy import Policy
from attestation.validate.fields import read_duration, read_hex, read_table, reject_unknown_keys
from enclave.attester import TEE_CHOICES
from protocol.config import ConfigError, load_toml, read_endpoint
from protocol.formulas import valid_site_id

#: The keys of the ``[site]`` table.
SITE_KEYS = (
    "id",
    "aggregator",
    "tee",
    "simulated_dir",
    "policy",
    "identity",
    "identity_certificate",
    "INSECURE_accept_any_aggregator",
    "simulated_measurement",
    "max_clock_skew",
    "state_dir",
)


@dataclass(frozen=True)
class SiteConfig:
    path: Path
    site_id: str
    aggregator: str
    tee: str
    simulated_dir: Path | None
    policy: Policy
    data: dict[str, Any]
    #: The sealed identity key (``attestfl site enroll`` writes it).
    identity: Path = Path("identity.sealed")
    #: Optional: the identity key's certificate under the organisation CA the operator's rule names.
    identity_certificate: Path | None = None
    #: Run even though the policy pins no aggregator measurement (loudly warned; never in production).
    insecure_unpinned: bool = False
    #: Simulated TEE only: launch with this measurement instead of the code's (demos of refusal).
    simulated_measurement: bytes | None = None
    #: How far this site's clock and the aggregator's may disagree.
    max_clock_skew: timedelta = timedelta(seconds=60)
    #: Receipts and the newest audit tree head seen (kept between runs).
    state_dir: Path = Path("site-state")

    @classmethod
    def load(cls, path: str | Path, *, load_policy: bool = True) -> SiteConfig:
        """The site's configuration; ``load_policy=False`` (enrolment) leaves the aggregator policy unread."""
        from fedsite.client import SitePolicyError, require_measurement_pins

        path = Path(path).resolve()
        data, _raw = load_toml(path)
        base = path.parent
        try:
            reject_unknown_keys(data, ("site", "data"), str(path))
            section = read_table(data, "site", "site")
            reject_unknown_keys(section, SITE_KEYS, "site")
            skew = read_duration(section, "max_clock_skew", "site")
            if skew is not None and skew.total_seconds() <= 0:
                raise ConfigError("[site] max_clock_skew: must be longer than zero")
            site_id = section.get("id", "")
            if not isinstance(site_id, str) or not valid_site_id(site_id):
                raise ConfigError("[site] id: required, 1-128 letters, digits, '-', '_' or '.'")
            if not isinstance(section.get("aggregator"), str) or not section["aggregator"]:
                raise ConfigError("[site] aggregator: required (host:port)")
            read_endpoint(section["aggregator"], "site", "aggregator")
            tee = section.get("tee", "auto")
            if tee not in TEE_CHOICES:
                raise ConfigError(f"[site] tee: {tee!r} is not one of {', '.join(TEE_CHOICES)}")
            if not isinstance(section.get("policy"), str):
                raise ConfigError("[site] policy: required: the policy file the aggregator's evidence must pass")
            for key in ("simulated_dir", "identity", "identity_certificate", "state_dir"):
                if key in section and not isinstance(section[key], str):
                    raise ConfigError(f"[site] {key}: expected a path (a string), got {section[key]!r}")
            insecure = section.get("INSECURE_accept_any_aggregator", False)
            if not isinstance(insecure, bool):
                raise ConfigError(f"[site] INSECURE_accept_any_aggregator: expected true or false, got {insecure!r}")
            policy = Policy.load(base / section["policy"]) if load_policy else Policy()
            if load_policy:
                try:
                    require_measurement_pins(policy, allow_unpinned=insecure)
                except SitePolicyError as exc:
                    raise ConfigError(f"[site] policy {section['policy']}: {exc}") from None
            return cls(
                path=path,
                site_id=site_id,
                aggregator=section["aggregator"],
                tee=tee,
                simulated_dir=base / section["simulated_dir"] if "simulated_dir" in section else None,
                policy=policy,
                data=read_table(data, "data", "site"),
                identity=base / section.get("identity", "identity.sealed"),
                identity_certificate=base / section["identity_certificate"]
                if "identity_certificate" in section
                else None,
                insecure_unpinned=insecure,
                simulated_measurement=read_hex(section, "simulated_measurement", "site", 48),
                max_clock_skew=skew or timedelta(seconds=60),
                state_dir=base / section.get("state_dir", "site-state"),
            )
        except PolicyError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
