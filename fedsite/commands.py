"""``attestfl site ...``: a site's commands (enroll, join, run).

Exit status: 0 done; 1 refused (the aggregator failed the site's policy, or the site was
not admitted); 2 unusable configuration or input, or the ``site`` extra not installed; 3 the
aggregator unreachable (after the retries of ``--wait``). Errors end the command in
``attestfl.cli.main`` (one line, their exit status); a refusal is printed here, with its
reasons (and as JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from attestation.errors import EXIT_OK, EXIT_REFUSED, ExtraNotInstalled
from protocol.config import ConfigError

if TYPE_CHECKING:
    from enclave.attester import Attester
    from enclave.sealing import SealingKeySource
    from fedsite.client import AdmissionRefused, AggregatorNotTrusted, SiteClient
    from fedsite.config import SiteConfig
    from fedsite.sdk import TorchTrainer

#: The modules of the ``site`` extra that joining and training need (pip install 'attestfl[site]').
SITE_EXTRA_MODULES = ("tenacity", "torch", "tqdm")
#: The largest identity certificate a site presents.
MAX_IDENTITY_CERTIFICATE_BYTES = 16 * 1024


def add_site_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    site = subparsers.add_parser("site", help="join an aggregator as a site")
    site_sub = site.add_subparsers(dest="site_command", required=True, metavar="COMMAND")
    enroll = site_sub.add_parser(
        "enroll",
        help="create this site's identity key, sealed by its TEE",
        description="Create the site's long-lived Ed25519 identity key inside its TEE, write it "
        "sealed (only this site's TEE and code can open it) to [site] identity, and print the "
        "public key and fingerprint the operator pins in the site's admission rule. Exit 0: "
        "enrolled; 2: unusable input.",
    )
    enroll.add_argument("--config", required=True, metavar="FILE", help="site.toml")
    enroll.add_argument(
        "--replace", action="store_true", help="replace an existing identity (the operator must pin the new key)"
    )
    enroll.add_argument("--json", action="store_true", help="print one JSON object")
    enroll.set_defaults(handler=run_site_enroll)
    join = site_sub.add_parser(
        "join",
        help="verify the aggregator, join, print the session",
        description="Verify the aggregator's evidence against the site's policy, then present "
        "this site's evidence. Exit 0: admitted; 1: aggregator untrusted or site refused; "
        "2: unusable input.",
    )
    join.add_argument("--config", required=True, metavar="FILE", help="site.toml")
    join.add_argument("--json", action="store_true", help="print one JSON object")
    join.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="keep retrying an unreachable or busy aggregator this long (default 60; refusals are never retried)",
    )
    join.set_defaults(handler=run_site_join)

    run = site_sub.add_parser(
        "run",
        help="take part in training: verify, join, train every round",
        description="Verify the aggregator, join, then for every round download the sealed global "
        "model, evaluate it on held-out data, train locally and upload the sealed update. The "
        'trainer is [data] trainer = "trainer.py:function" (a file next to site.toml) or "module:function", '
        "called with the [data] table and the "
        "config's directory and returning an fedsite.sdk.TorchTrainer. Exit 0: training finished; "
        "1: refused; 2: unusable input.",
    )
    run.add_argument("--config", required=True, metavar="FILE", help="site.toml")
    run.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    run.add_argument(
        "--progress",
        action="store_true",
        help="progress bars on stderr (training, large transfers) even when it is not a terminal",
    )
    run.add_argument("--json", action="store_true", help="print one JSON summary object")
    run.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="keep retrying an unreachable or busy aggregator this long (default 60; refusals are never retried)",
    )
    run.set_defaults(handler=run_site_run)
    from fedsite.verify import add_verify_command

    add_verify_command(site_sub)

    add_vendor_eval_command(site_sub)
    from fedsite.card_commands import add_cards_command

    add_cards_command(site_sub, open_site_client)


def site_attester(config: SiteConfig) -> Attester:
    from enclave.attester import open_attester
    from enclave.interface import NoTeeError
    from protocol.config import no_tee_error

    try:
        return open_attester(config.tee, simulated_dir=config.simulated_dir, measurement=config.simulated_measurement)
    except NoTeeError as exc:
        raise no_tee_error(config.path, "site", config.tee, exc) from None


def site_sealing(config: SiteConfig, attester: Attester) -> SealingKeySource:
    from enclave.identity import IdentityError
    from enclave.sealing import sealing_key_for

    sealing = sealing_key_for(attester, config.simulated_dir)
    if sealing is None:
        raise IdentityError(
            "this TEE has no local sealing key (TDX): the identity key must come from a key broker "
            "that releases it against this site's evidence (see docs/threat-model.md)"
        )
    return sealing


def run_site_enroll(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from enclave.identity import enroll
    from fedsite.config import SiteConfig

    out = out or sys.stdout
    config = SiteConfig.load(args.config, load_policy=False)
    attester = site_attester(config)
    identity = enroll(config.identity, site_sealing(config, attester), config.site_id, replace=args.replace)
    result = {
        "site": config.site_id,
        "identity_key": identity.public.hex(),
        "fingerprint": identity.fingerprint,
        "sealed": str(config.identity),
    }
    if args.json:
        print(json.dumps(result), file=out)
    else:
        print(
            f"enrolled site {config.site_id}: identity key sealed to {config.identity}\n"
            f"  fingerprint {identity.fingerprint}\n"
            "Give the operator this line for the site's admission rule "
            f"([admission.sites.{config.site_id}] in aggregator.toml):\n"
            f'identity_keys = ["{identity.public.hex()}"]',
            file=out,
        )
    return EXIT_OK


def _identity_certificate(config: SiteConfig) -> bytes:
    """The site's identity certificate (DER; a PEM file is converted), or b"" when none is configured."""
    from attestation.files import read_bounded

    if config.identity_certificate is None:
        return b""
    certificate = read_bounded(config.identity_certificate, MAX_IDENTITY_CERTIFICATE_BYTES, "identity certificate")
    if certificate.lstrip().startswith(b"-----"):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            certificate = x509.load_pem_x509_certificate(certificate).public_bytes(Encoding.DER)
        except ValueError as exc:
            raise ConfigError(
                f"[site] identity_certificate {config.identity_certificate}: not a PEM certificate ({exc})"
            ) from None
    return certificate


def open_site_client(config: SiteConfig, err: TextIO) -> SiteClient:
    """The SiteClient of a site.toml: its attester, its unsealed identity, its policy."""
    from enclave.identity import load_identity
    from fedsite.client import SiteClient

    attester = site_attester(config)
    identity = load_identity(config.identity, site_sealing(config, attester), config.site_id)
    certificate = _identity_certificate(config)
    if config.insecure_unpinned:
        print(
            "attestfl: WARNING: INSECURE_accept_any_aggregator is set: this site's policy pins no aggregator "
            "measurement, so any code in a TEE that passes the policy receives this site's updates",
            file=err,
        )
    return SiteClient(
        config.aggregator,
        site_id=config.site_id,
        policy=config.policy,
        attester=attester,
        identity=identity,
        identity_certificate=certificate,
        allow_unpinned_aggregator=config.insecure_unpinned,
        max_clock_skew=config.max_clock_skew,
    )


def _refused(
    exc: AggregatorNotTrusted | AdmissionRefused, args: argparse.Namespace, outcome: str, out: TextIO, err: TextIO
) -> int:
    """A refusal either way (the aggregator untrusted, the site not admitted): its reasons, exit 1."""
    if args.json:
        print(json.dumps({outcome: False, "error": str(exc).splitlines()[0], "reasons": list(exc.reasons)}), file=out)
    print(f"attestfl: {exc}", file=err)
    return EXIT_REFUSED


def _unreachable(exc: Exception, config: SiteConfig, what: str) -> Exception:
    """A gRPC failure left after the retries (unreachable aggregator, deadlines), as one line."""
    from fedsite.client import AggregatorUnreachable

    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    detail = f"{code().name}: {details()}" if callable(code) and callable(details) else str(exc)
    return AggregatorUnreachable(f"{what}cannot reach the aggregator at {config.aggregator} ({detail})")


def run_site_join(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    import grpc

    from fedsite.client import AdmissionRefused, AggregatorNotTrusted, AggregatorUnreachable
    from fedsite.config import SiteConfig
    from fedsite.sdk import join_with_retry

    out, err = out or sys.stdout, err or sys.stderr
    ExtraNotInstalled.check("site", "attestfl site join", SITE_EXTRA_MODULES[:1])
    config = SiteConfig.load(args.config)
    with open_site_client(config, err) as client:
        try:
            session = join_with_retry(client, wait=args.wait, say=lambda text: print(f"attestfl: {text}", file=err))
        except (AggregatorNotTrusted, AdmissionRefused) as exc:
            return _refused(exc, args, "admitted", out, err)
        except (grpc.RpcError, AggregatorUnreachable) as exc:
            raise _unreachable(exc, config, "") from None
    claims = session.claims
    result = {
        "admitted": True,
        "site": config.site_id,
        "session": claims.session_id.hex(),
        "status": claims.status,
        "expires": claims.expires.isoformat(),
        "aggregator": {
            k: session.aggregator_appraisal.claims.get(k)
            for k in ("measurement", "simulated", "debug")
            if k in session.aggregator_appraisal.claims
        },
    }
    print(
        json.dumps(result)
        if args.json
        else f"admitted: session {result['session']} ({result['status']}), expires {result['expires']}",
        file=out,
    )
    return EXIT_OK


def load_trainer(config: SiteConfig) -> TorchTrainer:
    """The trainer ``[data] trainer = "file.py:function"`` (relative to site.toml) or
    ``"module:function"`` makes from the [data] table (:mod:`fedsite.trainer_loading`)."""
    from fedsite.trainer_loading import load_factory

    spec = str(config.data.get("trainer", ""))
    try:
        factory = load_factory(spec, config.path.parent)
        try:
            trainer: TorchTrainer = factory(config.data, config.path.parent)
        except (KeyError, ValueError, OSError) as exc:  # the [data] table or the data files do not suit the trainer
            raise ConfigError(f"[data] trainer {spec}: {type(exc).__name__}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{config.path}: {exc}") from None
    return trainer


def run_site_run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    import grpc

    from fedsite.client import AdmissionRefused, AggregatorNotTrusted, AggregatorUnreachable
    from fedsite.config import SiteConfig
    from fedsite.sdk import SiteState, run_site

    out, err = out or sys.stdout, err or sys.stderr
    ExtraNotInstalled.check("site", "attestfl site run", SITE_EXTRA_MODULES)
    config = SiteConfig.load(args.config)
    trainer = load_trainer(config)
    vendor_data = None
    if "vendor_eval" in config.data:  # [data] vendor_eval = "held-out.npz": evaluate vendor models too
        from fedsite.vendor_eval import load_evaluation_data

        vendor_data = load_evaluation_data(str(config.path.parent / str(config.data["vendor_eval"])))
    with open_site_client(config, err) as client:
        try:
            summary = run_site(
                client,
                trainer,
                progress=None if args.quiet else err,
                wait=args.wait,
                state=SiteState(config.state_dir),
                vendor_data=vendor_data,
                bars=_bars(args, err),
            )
        except (AggregatorNotTrusted, AdmissionRefused) as exc:
            return _refused(exc, args, "finished", out, err)
        except (grpc.RpcError, AggregatorUnreachable) as exc:
            raise _unreachable(exc, config, "training stopped: ") from None
    result: dict[str, Any] = {
        "finished": True,
        "site": summary.site_id,
        "rounds_trained": summary.rounds_trained,
        "joins": summary.joins,
        "metrics": {str(k): v for k, v in summary.metrics.items()},
        "final_model": str(summary.final_model) if summary.final_model else None,
        "final_model_sha256": summary.final_model_sha256,
    }
    from fedsite.trainer_loading import write_metrics_csv

    result["metrics_csv"] = str(write_metrics_csv(config.state_dir / "metrics.csv", summary.metrics))
    final = summary.metrics.get(max(summary.metrics), {}) if summary.metrics else {}
    shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(final.items())) or "none"
    print(
        json.dumps(result)
        if args.json
        else f"{summary.site_id}: trained {len(summary.rounds_trained)} round(s), final model: {shown}; "
        f"metrics per round in {result['metrics_csv']}",
        file=out,
    )
    return EXIT_OK


def _bars(args: argparse.Namespace, err: TextIO) -> TextIO | None:
    """Progress bars on stderr: when it is a terminal or with --progress; never with --quiet (and
    never on stdout, where --json prints)."""
    from fedsite.progress import wanted

    if args.quiet:
        return None
    return err if wanted(err, forced=getattr(args, "progress", False)) else None


def run_evaluate_vendors(args: Any) -> int:
    """``attestfl site evaluate-vendors``: join, evaluate every pending vendor job, report."""
    import json
    import sys

    from fedsite.config import SiteConfig
    from fedsite.sdk import join_with_retry
    from fedsite.vendor_eval import load_evaluation_data, run_vendor_jobs

    config = SiteConfig.load(args.config)
    data = load_evaluation_data(args.data)
    with open_site_client(config, sys.stderr) as client:
        join_with_retry(client, wait=args.wait, say=lambda text: print(f"attestfl: {text}", file=sys.stderr))
        done = run_vendor_jobs(client, data)
    print(json.dumps({"site": config.site_id, "jobs": done}, indent=2, sort_keys=True))
    return 0


def add_vendor_eval_command(site_sub: Any) -> None:
    command = site_sub.add_parser(
        "evaluate-vendors",
        help="evaluate the vendor models sealed to this site, in memory, and report metrics",
        description="Verify the aggregator, join, fetch every vendor evaluation job re-sealed to this "
        "site's attested key, evaluate each model in memory on --data, and return the metrics sealed. "
        "Exit 0: done; 1: refused; 2: unusable input.",
    )
    command.add_argument("--config", required=True, metavar="FILE", help="site.toml")
    command.add_argument("--data", required=True, metavar="FILE", help=".npz with x, y, subgroup_<name>")
    command.add_argument("--wait", type=float, default=60.0, metavar="SECONDS")
    command.set_defaults(handler=run_evaluate_vendors)
