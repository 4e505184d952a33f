"""`attestfl model init`: a user's model code becomes the task's initial model (a real subprocess)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from protocol.tensors import ModelSpec, load_model


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attestfl.cli", "model", "init", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_a_batchnorm_model_becomes_float32_safetensors(tmp_path: Path) -> None:
    (tmp_path / "my_model.py").write_text(
        textwrap.dedent("""\
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            return nn.Sequential(
                nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)
            )
        """)
    )
    result = _run(tmp_path, "my_model.py:build", "-o", "initial.safetensors", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    data = (tmp_path / "initial.safetensors").read_bytes()
    assert printed["sha256"] == hashlib.sha256(data).hexdigest()
    tracked = next(t for t in printed["tensors"] if t["name"] == "1.num_batches_tracked")
    assert tracked["dtype"] == "int64" and tracked["cast"] is True  # an integer buffer, cast and said so
    model = load_model(tmp_path / "initial.safetensors")
    assert ModelSpec.of(model).tensors[0].name == "0.weight" and all(a.dtype.name == "float32" for a in model.values())
    human = _run(tmp_path, "my_model.py:build", "-o", "again.safetensors")
    assert "cast from int64" in human.stdout and 'initial_model = "again.safetensors"' in human.stdout


def test_unusable_factories_say_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "import torch\n\ndef complex_model():\n    return {'w': torch.zeros(2, dtype=torch.complex64)}\n"
        "\ndef broken():\n    raise RuntimeError('no GPU here')\n"
    )
    cases = [
        ("bad.py:complex_model", "complex64: attestfl federates float32 tensors"),
        ("bad.py:missing", "has no 'missing'"),
        ("nowhere.py:build", "no such file"),
        ("bad.py:broken", "the factory raised RuntimeError: no GPU here"),
        ("bad.py", "expected MODULE:FUNCTION"),
    ]
    for factory, message in cases:
        result = _run(tmp_path, factory, "-o", "x.safetensors")
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, (
            factory,
            result.stderr,
        )
