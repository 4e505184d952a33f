"""``attestfl enclave ...``: evidence from this machine's TEE (or the simulated TEE) and the
simulated launch measurement.

* ``attestfl enclave evidence --nonce HEX [--tee ...] [--simulated-dir DIR] [--gpu ...] -o FILE``
  writes an evidence bundle for the verifier's nonce, bound to enclave keys created in
  this process (they die with it: the command shows the format and checks the platform;
  the aggregator produces bundles with its long-lived in-process keys);
* ``attestfl enclave measure [--config FILE]`` prints the simulated launch measurement of
  the installed code (and configuration), the reference value a policy pins;
* ``attestfl enclave trust --simulated-dir DIR`` prints the policy line that trusts a
  simulated TEE's roots;
* ``attestfl enclave collateral --simulated-dir DIR --out CACHE_DIR [--revoke CERT]...``
  fills a verifier's collateral cache directory (:mod:`attestation.collateral`) with the
  simulated vendors' collateral (AMD CRL, Intel TCB info, QE identity, CRLs), so that an
  aggregator or ``attestfl evidence verify --collateral-dir`` verifies simulated SEV-SNP and
  TDX evidence with the verifier's collateral; ``--revoke`` lists a simulated certificate
  (``vcek``, ``ask``, ``pck-leaf``, ``pck-ca`` or a certificate file) as revoked.

Exit status: 0 done; 2 unusable input or no TEE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from attestation.errors import AttestflError
from attestation.files import read_bounded

from .attester import TEE_CHOICES, Attester, AttesterError, GpuAttester, make_bundle, open_attester
from .gpu import GPU_CHOICES, open_gpu_attester
from .keys import EnclaveKeys
from .simulated import SimulatedTeeError

EXIT_OK, EXIT_UNUSABLE = 0, 2
MAX_CONFIG_BYTES = 1024 * 1024


class EnclaveCliError(AttestflError):
    """A usage error of ``attestfl enclave``."""


def add_enclave_commands(subparsers: argparse._SubParsersAction) -> None:
    enclave = subparsers.add_parser("enclave", help="produce attestation evidence from this machine's TEE")
    sub = enclave.add_subparsers(dest="enclave_command", required=True, metavar="COMMAND")
    _add_evidence(sub)
    _add_measure(sub)
    _add_trust(sub)
    _add_collateral(sub)


def _add_evidence(sub: argparse._SubParsersAction) -> None:
    """``enclave evidence``: an evidence bundle for a verifier's nonce."""
    evidence = sub.add_parser(
        "evidence",
        help="write an evidence bundle for a verifier's nonce",
        description="Create enclave keys, bind them and the nonce into TEE evidence, write the evidence bundle. "
        "Exit 0: written; 2: unusable input or no TEE.",
    )
    evidence.add_argument("--nonce", required=True, metavar="HEX", help="the verifier's nonce (16 to 64 bytes, hex)")
    evidence.add_argument(
        "--tee", choices=TEE_CHOICES, default="auto", help="which TEE (default: detect the hardware TEE)"
    )
    evidence.add_argument(
        "--simulated-dir",
        metavar="DIR",
        help="the simulated TEE's root of trust (created on first use); required for simulated-*",
    )
    evidence.add_argument(
        "--gpu",
        choices=GPU_CHOICES,
        default="none",
        help="add GPU evidence: nvml (a CC-mode NVIDIA GPU), simulated, auto (nvml when a CC GPU is present)",
    )
    evidence.add_argument("--debug", action="store_true", help="simulated TEE only: launch a debug guest")
    evidence.add_argument(
        "--measurement",
        metavar="HEX",
        help="simulated TEE only: the launch measurement (48 bytes; default: attestfl enclave measure)",
    )
    evidence.add_argument(
        "--config", metavar="FILE", help="simulated TEE only: the aggregator configuration measured with the code"
    )
    evidence.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the bundle")
    evidence.set_defaults(handler=run_evidence)


def _add_measure(sub: argparse._SubParsersAction) -> None:
    """``enclave measure``: the simulated launch measurement."""
    measure = sub.add_parser(
        "measure", help="print the simulated launch measurement of the installed code and configuration"
    )
    measure.add_argument(
        "--config",
        metavar="FILE",
        help="the aggregator configuration to measure with the code (with every file it names: policy, initial model)",
    )
    measure.add_argument("--json", action="store_true", help="print one JSON object (digest, files, versions)")
    measure.set_defaults(handler=run_measure)


def _add_trust(sub: argparse._SubParsersAction) -> None:
    """``enclave trust``: the policy line that trusts a simulated TEE's roots."""
    trust = sub.add_parser("trust", help="print the policy line that trusts a simulated TEE's roots")
    trust.add_argument("--simulated-dir", required=True, metavar="DIR", help="the simulated TEE's directory")
    trust.add_argument("--gpu", action="store_true", help="include the simulated GPU's root (DIR/gpu)")
    trust.set_defaults(handler=run_trust)


def _add_collateral(sub: argparse._SubParsersAction) -> None:
    """``enclave collateral``: the simulated vendors' collateral into a cache directory."""
    collateral = sub.add_parser(
        "collateral",
        help="fill a verifier's collateral cache directory with the simulated vendors' collateral",
        description="Write the simulated AMD CRL and Intel TCB info, QE identity and CRLs into a collateral cache "
        "directory (the layout of docs/attestation.md). Exit 0: written; 2: unusable input.",
    )
    collateral.add_argument(
        "--simulated-dir", required=True, metavar="DIR", help="the simulated TEE's directory (created on first use)"
    )
    collateral.add_argument(
        "--out", required=True, metavar="CACHE_DIR", help="the collateral cache directory to fill (created if needed)"
    )
    collateral.add_argument("--issued", metavar="TIME", help="issue time of the collateral, ISO-8601 (default: now)")
    collateral.add_argument(
        "--lifetime",
        default="30d",
        metavar="DURATION",
        help="time to the next update, seconds or e.g. 30d, 12h (default 30d)",
    )
    collateral.add_argument(
        "--tcb-status",
        default="UpToDate",
        metavar="STATUS",
        help="TDX TCB status the TCB info gives the simulated platform (default UpToDate)",
    )
    collateral.add_argument(
        "--revoke",
        action="append",
        default=[],
        metavar="CERT",
        help="list as revoked: vcek, ask, pck-leaf, pck-ca, or a certificate file (DER or PEM); repeatable",
    )
    collateral.set_defaults(handler=run_collateral)


def _hex(text: str, what: str, size: int | None = None) -> bytes:
    try:
        value = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError as exc:
        raise EnclaveCliError(f"{what} is not hex: {text!r}") from exc
    if size is not None and len(value) != size:
        raise EnclaveCliError(f"{what} must be {size} bytes, got {len(value)}")
    return value


def _read_config(path: str | None) -> bytes | None:
    """The configuration bundle's bytes (the file and every file it names: enclave.config_bundle)."""
    if path is None:
        return None
    from .config_bundle import ConfigBundleError, config_bundle

    read_bounded(path, MAX_CONFIG_BYTES, "configuration", EnclaveCliError)
    try:
        return config_bundle(path).data
    except ConfigBundleError as exc:
        raise EnclaveCliError(str(exc)) from None


def _cpu_attester(args: argparse.Namespace) -> Attester:
    measurement = _hex(args.measurement, "--measurement", 48) if args.measurement else None
    return open_attester(
        args.tee,
        simulated_dir=args.simulated_dir,
        debug=args.debug,
        measurement=measurement,
        config=_read_config(args.config),
    )


def _gpu_attester(args: argparse.Namespace) -> GpuAttester | None:
    return open_gpu_attester(args.gpu, simulated_dir=args.simulated_dir)


def run_evidence(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        from attestation.binding import check_nonce
        from attestation.bundle_abi import encode_bundle
        from attestation.errors import AttestationError

        nonce = _hex(args.nonce, "--nonce")
        try:
            check_nonce(nonce)
        except AttestationError as exc:
            raise EnclaveCliError(f"--nonce: {exc}") from exc
        attester = _cpu_attester(args)
        gpu = _gpu_attester(args)
        keys = EnclaveKeys()
        data = encode_bundle(make_bundle(attester, keys, nonce, gpu=gpu))
        _write_output(args.output, data)
    except (EnclaveCliError, AttesterError, SimulatedTeeError, AttestationError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    report = err if args.output == "-" else out  # the bundle itself went to stdout
    print(
        f"wrote {len(data)}-byte {attester.name} evidence bundle{' with GPU evidence' if gpu else ''} to {args.output}",
        file=report,
    )
    print(f"enclave keys: x25519 {keys.public.x25519.hex()} ed25519 {keys.public.ed25519.hex()}", file=report)
    return EXIT_OK


def _write_output(path: str, data: bytes) -> None:
    try:
        if path == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise EnclaveCliError(f"cannot write {path}: {exc.strerror or exc}") from exc


def run_measure(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from .measure import measure

    try:
        result = measure(_read_config(args.config))
    except (EnclaveCliError, OSError, ValueError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    if args.json:
        print(
            json.dumps(
                {
                    "measurement": result.hex,
                    "config_sha384": result.config_sha384,
                    "config_bundle": _bundle_description(args.config),
                    "versions": dict(result.versions),
                    "files": [{"package": f.package, "path": f.path, "sha384": f.sha384} for f in result.files],
                }
            ),
            file=out,
        )
    else:
        print(result.hex, file=out)
    return EXIT_OK


def _bundle_description(path: str | None) -> dict[str, object] | None:
    from .config_bundle import config_bundle

    return None if path is None else config_bundle(path).describe()


def run_trust(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from .simulated.pki import load_or_create

    try:
        fingerprints = list(load_or_create(args.simulated_dir).trusted_root_fingerprints().values())
        if args.gpu:
            from .simulated.gpu import load_or_create_gpu_pki

            fingerprints.append(load_or_create_gpu_pki(Path(args.simulated_dir) / "gpu").root_fingerprint)
    except SimulatedTeeError as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    print("trusted_simulated_roots = [" + ", ".join(f'"{fp}"' for fp in fingerprints) + "]", file=out)
    return EXIT_OK


REVOKE_NAMES = ("vcek", "ask", "pck-leaf", "pck-ca")
MAX_CERT_BYTES = 64 * 1024


def _revoked(names: list[str], simulated_dir: str) -> list[bytes]:
    from .simulated.pki import load_or_create

    pki = load_or_create(simulated_dir)
    named = {
        "vcek": pki.amd.vcek.der,
        "ask": pki.amd.ask.der,
        "pck-leaf": pki.intel.pck_leaf.der,
        "pck-ca": pki.intel.pck_ca.der,
    }
    return [
        named[name] if name in named else read_bounded(name, MAX_CERT_BYTES, "certificate file", EnclaveCliError)
        for name in names
    ]


def run_collateral(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    from attestation.errors import AttestationError
    from attestation.timeutil import parse_time
    from attestation.validate.fields import read_duration

    from .simulated.collateral import write_simulated_collateral

    try:
        issued = parse_time(args.issued) if args.issued else None
        lifetime = read_duration({"lifetime": args.lifetime}, "lifetime", "--lifetime")
        assert lifetime is not None
        if lifetime.total_seconds() <= 0:
            raise EnclaveCliError("--lifetime must be positive")
        from attestation.platforms.tdx.collateral_abi import TCB_LEVEL_STATUSES

        if args.tcb_status not in TCB_LEVEL_STATUSES:
            raise EnclaveCliError(
                f"--tcb-status {args.tcb_status!r} is not one of {', '.join(sorted(TCB_LEVEL_STATUSES))}"
            )
        written = write_simulated_collateral(
            args.simulated_dir,
            args.out,
            issued=issued,
            lifetime=lifetime,
            tcb_status=args.tcb_status,
            revoked=_revoked(args.revoke, args.simulated_dir),
        )
    except (EnclaveCliError, SimulatedTeeError, AttestationError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    print(
        f"wrote {len(written)} simulated collateral files to {args.out}"
        + (f" (revoked: {', '.join(args.revoke)})" if args.revoke else ""),
        file=out,
    )
    return EXIT_OK
