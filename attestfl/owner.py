"""``attestfl owner ...``: a model owner's commands (docs/model-delivery.md).

* ``attestfl owner keygen -o owner.key`` writes a new X25519 private key (PEM, mode 0600) and
  prints the public key the operator lists in ``[task.release] owner_keys``;
* ``attestfl owner open SEALED --key owner.key -o final-model.safetensors`` opens a model the
  aggregator sealed to that key, checks its digest, and writes it with its SHA-256 beside it.

Exit status: 0 done; 1 the file is not for this key or does not open (tampered); 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from attestation.errors import EXIT_OK, EXIT_REFUSED, AttestflError
from attestation.files import read_bounded
from protocol.delivery import DeliveryError, generate_owner_key, load_owner_key, open_owner_model, write_model
from protocol.tensors import MAX_MODEL_BYTES


class OwnerError(AttestflError):
    """An owner command's input is unusable."""


def add_owner_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    owner = subparsers.add_parser("owner", help="a model owner's key and sealed models")
    sub = owner.add_subparsers(dest="owner_command", required=True, metavar="COMMAND")
    keygen = sub.add_parser("keygen", help="create an owner key; print the public key for [task.release] owner_keys")
    keygen.add_argument("-o", "--output", required=True, metavar="FILE", help="the private key file to write (PEM)")
    keygen.add_argument("--json", action="store_true", help="print one JSON object")
    keygen.set_defaults(handler=run_owner_keygen)
    opener = sub.add_parser("open", help="open a model sealed to your owner key")
    opener.add_argument("sealed", metavar="SEALED", help="the .afm file the aggregator wrote for your key")
    opener.add_argument("--key", required=True, metavar="FILE", help="your owner key (attestfl owner keygen)")
    opener.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the model (safetensors)")
    opener.add_argument("--json", action="store_true", help="print one JSON object")
    opener.set_defaults(handler=run_owner_open)


def run_owner_keygen(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    path = Path(args.output)
    if path.exists():
        raise OwnerError(f"{path} exists: an owner key is never overwritten")
    pem, public = generate_owner_key()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    if args.json:
        print(json.dumps({"key": str(path), "owner_key": public.hex()}), file=out)
    else:
        print(
            f"owner key written to {path} (keep it secret)\nGive the operator this line for aggregator.toml:\n"
            f'[task.release]\nowner_keys = ["{public.hex()}"]',
            file=out,
        )
    return EXIT_OK


def run_owner_open(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    key = load_owner_key(read_bounded(args.key, 64 * 1024, "owner key", OwnerError))
    sealed = read_bounded(args.sealed, MAX_MODEL_BYTES + (1 << 30), "sealed model", OwnerError)
    try:
        opened = open_owner_model(sealed, key)
    except DeliveryError as exc:
        print(f"attestfl: {exc}", file=err)
        return EXIT_REFUSED
    output = Path(args.output)
    path, digest = write_model(output.parent, output.name, opened.model)
    if args.json:
        print(json.dumps({"model": str(path), "round": opened.round, "sha256": digest}), file=out)
    else:
        print(f"model of round {opened.round} written to {path} (SHA-256 {digest})", file=out)
    return EXIT_OK
