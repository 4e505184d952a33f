"""`attestfl serve --config bad.toml` (a real process): exit 2, one line on stderr naming the
file, table and key, nothing on stdout, and nothing created: no audit-log directory, no state
directory, no simulated TEE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_config_validation import write


@pytest.mark.parametrize(
    ("aggregator", "task", "message"),
    [
        (None, {"rounds": '"5"'}, '[task] rounds: expected an integer from 1 to 100000, got "5"'),
        ({"listen": '"0.0.0.0:70000"'}, None, "[aggregator] listen: expected host:port with a port from 0 to 65535"),
        (
            {"metrics_listen": '"0.0.0.0:0"'},
            None,
            "[aggregator] metrics_listen: expected host:port with a port from 1 to 65535",
        ),
        (
            {"stall_timeout": '"0s"'},
            None,
            '[aggregator] stall_timeout: expected a duration longer than zero and at most 7d, got "0s"',
        ),
        (None, {"clip_norm": "nan"}, "[task] clip_norm: expected a finite number > 0, got nan"),
    ],
    ids=["rounds-string", "listen-port", "metrics-port-zero", "zero-duration", "nan"],
)
def test_serve_refuses_a_bad_config_before_any_side_effect(
    tmp_path: Path, aggregator: dict | None, task: dict | None, message: str
) -> None:
    config = write(tmp_path, {**(aggregator or {}), "log_dir": '"audit-log"', "state_dir": '"state"'}, task)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "attestfl.cli", "serve", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"attestfl: error: {config}: {message}"), lines[0]
    assert (
        not (tmp_path / "audit-log").exists() and not (tmp_path / "state").exists() and not (tmp_path / "sim").exists()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
