"""``attestfl model init MODULE:FACTORY -o initial.safetensors``: the task's initial model from
your own model code.

``FACTORY`` is a function of your module (``my_model.py:build`` relative to the current
directory, or an importable ``package.module:build``) that returns a torch ``nn.Module`` or a
``state_dict``-like mapping of tensors/arrays. Every tensor is written as float32 safetensors
(attestfl's update format): floating tensors of other precisions are cast, and so are integer
and boolean *buffers* (e.g. BatchNorm's ``num_batches_tracked``: a site loads them back into
their own dtype); complex or non-numeric tensors are refused with what to do. The command
prints the model spec (name, shape, dtype as loaded) and the file's SHA-256, the digest the
aggregator logs for the initial model.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from attestation.errors import EXIT_UNUSABLE, AttestflError
from protocol.tensors import encode_tensors


class ModelInitError(AttestflError, ValueError):
    """The factory cannot be loaded or its model cannot be written; the message says what to do."""

    exit_code = EXIT_UNUSABLE


def load_factory(spec: str, base_dir: Path) -> Any:
    """``file.py:function`` (relative to ``base_dir``) or ``package.module:function``."""
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise ModelInitError(f"{spec!r}: expected MODULE:FUNCTION, e.g. my_model.py:build or mypackage.models:build")
    try:
        if module_name.endswith(".py"):
            path = (base_dir / module_name).resolve()
            if not path.is_file():
                raise ModelInitError(f"{path}: no such file (the module part of {spec!r} is relative to {base_dir})")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.path.insert(0, str(path.parent))  # its own sibling imports work, as when run as a script
            try:
                loader_spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            module = importlib.import_module(module_name)
        factory = getattr(module, function)
    except ModelInitError:
        raise
    except AttributeError:
        raise ModelInitError(f"{spec!r}: the module has no {function!r}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import: say which and why
        raise ModelInitError(f"{spec!r}: importing the module failed: {type(exc).__name__}: {exc}") from None
    if not callable(factory):
        raise ModelInitError(f"{spec!r}: {function!r} is not callable")
    return factory


def tensors_of(model: Any) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """float32 arrays of a module's ``state_dict`` (or a mapping), and the spec with the dtypes as loaded."""
    state = model.state_dict() if hasattr(model, "state_dict") else model
    if not isinstance(state, Mapping) or not state:
        raise ModelInitError("the factory returned neither a torch nn.Module nor a non-empty mapping of tensors")
    tensors: dict[str, np.ndarray] = {}
    spec = []
    for name, value in state.items():
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        kind = array.dtype.kind
        if kind not in "fiub":
            raise ModelInitError(
                f"tensor {name!r} has dtype {array.dtype}: attestfl federates float32 tensors; convert it "
                "(or leave it out of the state_dict) in your factory"
            )
        spec.append(
            {
                "name": str(name),
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "cast": kind != "f" or array.dtype != np.float32,
            }
        )
        converted = array.astype(np.float32)
        if kind == "f" and not np.isfinite(converted).all():
            raise ModelInitError(f"tensor {name!r} has non-finite values (or overflows float32)")
        tensors[str(name)] = converted
    return tensors, spec


def run_model_init(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    factory = load_factory(args.factory, Path.cwd())
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed: say so in one line
        raise ModelInitError(f"{args.factory}: the factory raised {type(exc).__name__}: {exc}") from None
    tensors, spec = tensors_of(model)
    data = encode_tensors(tensors)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    parameters = sum(int(np.prod(t["shape"])) for t in spec)
    if args.json:
        print(
            json.dumps(
                {"file": str(output), "sha256": digest, "parameters": parameters, "bytes": len(data), "tensors": spec}
            ),
            file=out,
        )
        return 0
    print(
        f"wrote {output}: {len(spec)} tensors, {parameters:,} parameters, {len(data):,} bytes, sha256 {digest}",
        file=out,
    )
    width = max(len(t["name"]) for t in spec)
    for t in spec:
        note = f"  (cast from {t['dtype']})" if t["cast"] else ""
        print(f"  {t['name']:<{width}}  {'x'.join(map(str, t['shape'])) or 'scalar':>14}  float32{note}", file=out)
    print(f'Use it as [task] initial_model = "{output.name}" in aggregator.toml.', file=out)
    return 0


def add_model_commands(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="make the task's initial model from your model code")
    sub = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    init = sub.add_parser(
        "init",
        help="write MODULE:FACTORY's model as float32 safetensors and print its spec",
        description="Call FACTORY (file.py:function relative to the current directory, or package.module:function) "
        "to build your torch model, write its state_dict as float32 safetensors (integer and boolean buffers cast, "
        "other precisions cast, complex refused), and print the spec and SHA-256. Exit 0: written; 2: unusable.",
    )
    init.add_argument("factory", metavar="MODULE:FACTORY")
    init.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the safetensors file")
    init.add_argument("--json", action="store_true", help="print one JSON object")
    init.set_defaults(handler=run_model_init)
