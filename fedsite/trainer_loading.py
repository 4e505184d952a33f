"""Loading a site's trainer factory from ``[data] trainer``.

Two forms:

* ``"trainer.py:make_trainer"``: a Python file, relative to the directory of ``site.toml``
  (no ``PYTHONPATH`` needed). Its own sibling modules import as when it is run as a script.
* ``"package.module:function"``: an importable module (an installed package).

The factory is called as ``factory(data, base_dir)`` with the ``[data]`` table and the config's
directory, and returns a :class:`fedsite.sdk.TorchTrainer` (or any object with its interface).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from attestation.files import write_atomically
from protocol.config import ConfigError

_FORM = '"file.py:function" (relative to site.toml) or "package.module:function"'


def load_factory(spec: str, base_dir: Path) -> Any:
    """The callable ``spec`` names; :class:`ConfigError` says what is wrong in one line."""
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise ConfigError(f"[data] trainer: expected {_FORM}, got {spec!r}")
    try:
        if module_name.endswith(".py"):
            path = (base_dir / module_name).resolve()
            if not path.is_file():
                raise ConfigError(
                    f"[data] trainer: {path}: no such file (the file in {spec!r} is relative to {base_dir})"
                )
            loader_spec = importlib.util.spec_from_file_location(f"attestfl_site_trainer_{path.stem}", path)
            if loader_spec is None or loader_spec.loader is None:
                raise ConfigError(f"[data] trainer: {path}: not loadable as a Python module")
            module = importlib.util.module_from_spec(loader_spec)
            sys.path.insert(0, str(path.parent))  # its sibling imports work, as when run as a script
            try:
                loader_spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the site's own module failed to import: say which and why
        raise ConfigError(f"[data] trainer: cannot load {spec}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ConfigError(f"[data] trainer: {module_name} has no function {function!r}")
    return factory


def write_metrics_csv(path: Path, metrics: dict[int, dict[str, float]]) -> Path:
    """``metrics.csv``: one row per evaluated round (``round`` then each metric, sorted by name),
    the model that round started from evaluated on this site's held-out data. Written whole
    (a temporary file renamed into place)."""
    import csv
    import io

    names = sorted({name for values in metrics.values() for name in values})
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["round", *names])
    for round_number in sorted(metrics):
        writer.writerow([round_number, *(metrics[round_number].get(name, "") for name in names)])
    write_atomically(path, text.getvalue(), durable=False)
    return path
