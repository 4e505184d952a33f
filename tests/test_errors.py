"""One error model: every exception class attestfl defines derives from AttestflError, whose
exit_code is the command's exit status (1 refused, 2 unusable, 3 a fault), and the console script
catches it once: one line, that status, never a traceback."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.service import FailStop, UpdateRefused
from attestation.errors import EXIT_FAULT, EXIT_REFUSED, EXIT_UNUSABLE, AttestationError, AttestflError
from fedsite.client import AdmissionRefused, AggregatorNotTrusted, ClockSkew, SiteError
from protocol.config import ConfigError

PACKAGES = ("attestation", "enclave", "native", "protocol", "aggregator", "fedsite", "auditor", "attestfl")


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        modules = [package] + [
            importlib.import_module(info.name) for info in pkgutil.walk_packages(package.__path__, f"{name}.")
        ]
        for module in modules:
            for _, value in inspect.getmembers(module, inspect.isclass):
                if issubclass(value, BaseException) and value.__module__ == module.__name__:
                    found.append(value)
    return found


def test_every_exception_class_derives_from_attestflerror() -> None:
    classes = _exception_classes()
    assert len(classes) >= 50
    strays = sorted(f"{c.__module__}.{c.__name__}" for c in classes if not issubclass(c, AttestflError))
    assert not strays, f"not an AttestflError: {strays}"


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (AggregatorNotTrusted, EXIT_REFUSED, "refused"),
        (AdmissionRefused, EXIT_REFUSED, "refused"),
        (UpdateRefused, EXIT_REFUSED, "refused"),
        (FailStop, EXIT_FAULT, "fault"),
        (ConfigError, EXIT_UNUSABLE, "unusable"),
        (AttestationError, EXIT_UNUSABLE, "unusable"),
        (ClockSkew, EXIT_UNUSABLE, "unusable"),
        (SiteError, EXIT_UNUSABLE, "unusable"),
    ],
)
def test_exit_status_and_kind(error: type[AttestflError], status: int, kind: str) -> None:
    instance = error.__new__(error)
    assert error.exit_code == status and instance.kind == kind


def test_the_console_script_catches_once(tmp_path: Path) -> None:
    """An unusable input: one line, exit 2; an internal error: one line naming it, exit 2; with
    ATTESTFL_DEBUG=1 the traceback of the internal error."""
    missing = subprocess.run(
        [sys.executable, "-m", "attestfl.cli", "serve", "--config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and missing.stderr.startswith("attestfl: error:")
    # A handler with a bug (patched in before main builds the parser, which binds it).
    script = (
        "import sys, attestfl.cli as cli, aggregator.commands as c\n"
        "def boom(args, out=None, err=None):\n    raise KeyError('bug')\n"
        "c.run_serve = boom\nsys.exit(cli.main(['serve', '--config', 'x']))\n"
    )
    internal = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert internal.returncode == 2 and internal.stderr.count("\n") == 1, internal.stderr
    assert "internal error (KeyError" in internal.stderr and "nothing was accepted" in internal.stderr
    debug = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ATTESTFL_DEBUG": "1"},
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
