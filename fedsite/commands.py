"""``attestfl site ...``: a site's commands (enroll, join, run).

Exit status: 0 done; 1 refused (the aggregator failed the site's policy, or the site was
not admitted); 2 unusable configuration or input, or the aggregator unreachable.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from attestation.errors import AttestationError

EXIT_OK, EXIT_REFUSED, EXIT_UNUSABLE = 0, 1, 2


def add_site_commands(subparsers: argparse._SubParsersAction) -> None:
    site = subparsers.add_parser("site", help="join an aggregator as a site")
    site_sub = site.add_subparsers(dest="site_command", required=True, metavar="COMMAND")
    enroll = site_sub.add_parser("enroll", help="create this site's identity key, sealed by its TEE",
                                 description="Create the site's long-lived Ed25519 identity key inside its TEE, write it sealed "
                                 "(only this site's TEE and code can open it) to [site] identity, and print the public key and "
                                 "fingerprint the operator pins in the site's admission rule. Exit 0: enrolled; 2: unusable input.")
    enroll.add_argument("--config", required=True, metavar="FILE", help="site.toml")
    enroll.add_argument("--replace", action="store_true", help="replace an existing identity (the operator must pin the new key)")
    enroll.add_argument("--json", action="store_true", help="print one JSON object")
    enroll.set_defaults(handler=run_site_enroll)
    join = site_sub.add_parser("join", help="verify the aggregator, join, print the session",
                               description="Verify the aggregator's evidence against the site's policy, then present "
                               "this site's evidence. Exit 0: admitted; 1: aggregator untrusted or site refused; 2: unusable input.")
    join.add_argument("--config", required=True, metavar="FILE", help="site.toml")
    join.add_argument("--json", action="store_true", help="print one JSON object")
    join.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                      help="keep retrying an unreachable or busy aggregator this long (default 60; refusals are never retried)")
    join.set_defaults(handler=run_site_join)

    run = site_sub.add_parser("run", help="take part in training: verify, join, train every round",
                              description="Verify the aggregator, join, then for every round download the sealed global model, "
                              "evaluate it on held-out data, train locally and upload the sealed update. The trainer is "
                              "[data] trainer = \"module:function\", called with the [data] table and the config's directory and "
                              "returning an fedsite.sdk.TorchTrainer. Exit 0: training finished; 1: refused; 2: unusable input.")
    run.add_argument("--config", required=True, metavar="FILE", help="site.toml")
    run.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    run.add_argument("--json", action="store_true", help="print one JSON summary object")
    run.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                     help="keep retrying an unreachable or busy aggregator this long (default 60; refusals are never retried)")
    run.set_defaults(handler=run_site_run)




def site_attester(config: "SiteConfig"):  # noqa: ANN201, F821
    from enclave.attester import open_attester

    return open_attester(config.tee, simulated_dir=config.simulated_dir, measurement=config.simulated_measurement)


def site_sealing(config: "SiteConfig", attester: object):  # noqa: ANN201, F821
    from enclave.identity import IdentityError
    from enclave.sealing import sealing_key_for

    sealing = sealing_key_for(attester, config.simulated_dir)
    if sealing is None:
        raise IdentityError("this TEE has no local sealing key (TDX): the identity key must come from a key broker "
                            "that releases it against this site's evidence (see docs/threat-model.md)")
    return sealing


def run_site_enroll(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from enclave.attester import AttesterError
    from enclave.identity import IdentityError, enroll
    from enclave.sealing import SealingError

    from fedsite.config import ConfigError, SiteConfig

    out, err = out or sys.stdout, err or sys.stderr
    try:
        config = SiteConfig.load(args.config, load_policy=False)
        attester = site_attester(config)
        identity = enroll(config.identity, site_sealing(config, attester), config.site_id, replace=args.replace)
    except (ConfigError, AttestationError, AttesterError, IdentityError, SealingError, OSError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    result = {"site": config.site_id, "identity_key": identity.public.hex(), "fingerprint": identity.fingerprint,
              "sealed": str(config.identity)}
    if args.json:
        print(json.dumps(result), file=out)
    else:
        print(f"enrolled site {config.site_id}: identity key sealed to {config.identity}\n"
              f"  fingerprint {identity.fingerprint}\n"
              f"Give the operator this line for the site's admission rule ([admission.sites.{config.site_id}] in aggregator.toml):\n"
              f'identity_keys = ["{identity.public.hex()}"]', file=out)
    return EXIT_OK


def open_site_client(config: "SiteConfig", err: TextIO):  # noqa: ANN201, F821
    """The SiteClient of a site.toml: its attester, its unsealed identity, its policy."""
    from attestation.files import read_bounded
    from enclave.identity import load_identity

    from fedsite.client import SiteClient

    attester = site_attester(config)
    identity = load_identity(config.identity, site_sealing(config, attester), config.site_id)
    certificate = b""
    if config.identity_certificate is not None:
        certificate = read_bounded(config.identity_certificate, 16 * 1024, "identity certificate")
        if certificate.lstrip().startswith(b"-----"):
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            certificate = x509.load_pem_x509_certificate(certificate).public_bytes(Encoding.DER)
    if config.insecure_unpinned:
        print("attestfl: WARNING: INSECURE_accept_any_aggregator is set: this site's policy pins no aggregator measurement, "
              "so any code in a TEE that passes the policy receives this site's updates", file=err)
    return SiteClient(config.aggregator, site_id=config.site_id, policy=config.policy, attester=attester, identity=identity,
                      identity_certificate=certificate, allow_unpinned_aggregator=config.insecure_unpinned,
                      max_clock_skew=config.max_clock_skew)


def run_site_join(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from enclave.attester import AttesterError
    from enclave.identity import IdentityError
    from enclave.sealing import SealingError

    from fedsite.config import ConfigError, SiteConfig
    from fedsite.sdk import join_with_retry
    from fedsite.client import AdmissionRefused, AggregatorNotTrusted, SiteError

    out, err = out or sys.stdout, err or sys.stderr
    try:
        config = SiteConfig.load(args.config)
        client = open_site_client(config, err)
    except (ConfigError, AttestationError, AttesterError, IdentityError, SealingError, SiteError, OSError, ValueError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    with client:
        try:
            session = join_with_retry(client, wait=args.wait, say=lambda text: print(f"attestfl: {text}", file=err))
        except (AggregatorNotTrusted, AdmissionRefused) as exc:
            if args.json:
                print(json.dumps({"admitted": False, "error": str(exc).splitlines()[0], "reasons": list(exc.reasons)}), file=out)
            print(f"attestfl: {exc}", file=err)
            return EXIT_REFUSED
        except SiteError as exc:  # clock skew, unreachable after --wait
            print(f"attestfl: error: {exc}", file=err)
            return EXIT_UNUSABLE
        except Exception as exc:  # grpc errors after retries: unreachable aggregator, deadlines
            detail = f"{exc.code().name}: {exc.details()}" if hasattr(exc, "code") else str(exc)
            print(f"attestfl: error: cannot reach the aggregator at {config.aggregator} ({detail})", file=err)
            return EXIT_UNUSABLE
    result = {"admitted": True, "site": config.site_id, "session": session.claims.session_id.hex(),
              "status": session.claims.status, "expires": session.claims.expires.isoformat(),
              "aggregator": {k: session.aggregator_appraisal.claims.get(k) for k in ("measurement", "simulated", "debug")
                             if k in session.aggregator_appraisal.claims}}
    print(json.dumps(result) if args.json else f"admitted: session {result['session']} ({result['status']}), expires {result['expires']}", file=out)
    return EXIT_OK


def load_trainer(config: "SiteConfig"):  # noqa: ANN201, F821
    import importlib

    spec = str(config.data.get("trainer", ""))
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise AttestationError('[data] trainer: expected "module:function" returning an fedsite.sdk.TorchTrainer')
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise AttestationError(f"[data] trainer: cannot load {spec}: {exc}") from exc
    return factory(config.data, config.path.parent)


def run_site_run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from enclave.attester import AttesterError
    from enclave.identity import IdentityError
    from enclave.sealing import SealingError

    from fedsite.config import ConfigError, SiteConfig
    from fedsite.sdk import SiteState, run_site
    from fedsite.client import AdmissionRefused, AggregatorNotTrusted, SiteError

    out, err = out or sys.stdout, err or sys.stderr
    try:
        config = SiteConfig.load(args.config)
        trainer = load_trainer(config)
        client = open_site_client(config, err)
    except (ConfigError, AttestationError, AttesterError, IdentityError, SealingError, SiteError, OSError, KeyError, ValueError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    with client:
        try:
            summary = run_site(client, trainer, progress=None if args.quiet else err, wait=args.wait, state=SiteState(config.state_dir))
        except (AggregatorNotTrusted, AdmissionRefused) as exc:
            print(f"attestfl: {exc}", file=err)
            if args.json:
                print(json.dumps({"finished": False, "error": str(exc).splitlines()[0], "reasons": list(exc.reasons)}), file=out)
            return EXIT_REFUSED
        except SiteError as exc:  # clock skew, unreachable after --wait
            print(f"attestfl: error: training stopped: {exc}", file=err)
            return EXIT_UNUSABLE
        except Exception as exc:  # grpc errors after retries: unreachable aggregator, deadlines
            detail = f"{exc.code().name}: {exc.details()}" if hasattr(exc, "code") else str(exc)
            print(f"attestfl: error: training stopped: {detail}", file=err)
            return EXIT_UNUSABLE
    result = {"finished": True, "site": summary.site_id, "rounds_trained": summary.rounds_trained, "joins": summary.joins,
              "metrics": {str(k): v for k, v in summary.metrics.items()}}
    print(json.dumps(result) if args.json else f"{summary.site_id}: trained rounds {summary.rounds_trained}, final metrics "
          f"{summary.metrics.get(max(summary.metrics), {}) if summary.metrics else {}}", file=out)
    return EXIT_OK
