"""Progress bars of `attestfl site run` (fedsite/progress.py): training rounds and the trainer's
steps, model download and update upload over a few MB; only on a terminal or with --progress,
on stderr, never in --json's stdout. End to end with the real `attestfl serve` and the scaffold's
trainer on a 5.6 MB model."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

from fedsite.progress import PROGRESS_BYTES, SiteBars, advance, wanted
from tests.test_operator_journey import free_port, printed_commands, sh, shim


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal_or_when_asked() -> None:
    assert not wanted(io.StringIO()) and wanted(io.StringIO(), forced=True)
    assert wanted(Terminal()) and not wanted(None, forced=True)
    closed = io.StringIO()
    closed.close()
    assert not wanted(closed)


def test_training_and_transfer_bars() -> None:
    advance(total=3)  # outside a shown bar: nothing happens
    stream = Terminal()
    bars = SiteBars("site-a", stream)
    with bars.training(1, 2):
        for _ in range(3):
            advance(total=3, unit="batch")
    bars.say("[site-a] round 1/2: update sealed")
    with bars.training(2, 2):
        pass  # a trainer that reports no steps: the rounds bar still moves
    assert bars.rounds is not None and bars.rounds.n == 2
    with bars.transfer(PROGRESS_BYTES - 1, "small") as small:
        assert small is None
    with bars.transfer(PROGRESS_BYTES, "[site-a] update of round 2") as on_chunk:
        assert on_chunk is not None
        on_chunk(PROGRESS_BYTES)
    bars.close()
    shown = stream.getvalue()
    for text in ("[site-a] training rounds", "[site-a] round 1/2", "0/3", "batch", "update of round 2"):
        assert text in shown, text
    assert "[site-a] round 1/2: update sealed\n" in shown
    quiet = SiteBars("site-a", None, io.StringIO())
    with quiet.training(1, 1), quiet.transfer(10 * PROGRESS_BYTES, "big") as none:
        advance(total=1)
        assert none is None
    quiet.say("a line")
    assert quiet.lines.getvalue() == "a line\n"  # type: ignore[union-attr]


def test_site_run_progress_with_json_and_a_large_model(tmp_path: Path) -> None:
    env = shim(tmp_path)
    port = free_port()
    new_aggregator = sh(
        f"attestfl new aggregator agg --rounds 2 --min-sites 1 --listen 127.0.0.1:{port}", tmp_path, env
    )
    init, add_site, _check, _measure, serve = printed_commands(new_aggregator.stdout)
    enroll, pin, _site_check, run = printed_commands(
        sh(f"attestfl new site site --id hospital-a --aggregator 127.0.0.1:{port}", tmp_path, env).stdout
    )
    for side in ("agg", "site"):  # a 1.4 M-parameter model (5.6 MB): downloads and uploads show bars
        model = tmp_path / side / "model.py"
        model.write_text(model.read_text().replace("HIDDEN = 32", "HIDDEN = 100_000"))
    for command in (init, enroll, add_site.replace("<enrolment.json>", "site/enrolment.json")):
        sh(command, tmp_path, env)
    sh(pin.replace("<aggregator.toml>", "agg/aggregator.toml"), tmp_path, env)
    server = subprocess.Popen(
        ["bash", "-c", serve], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        done = subprocess.run(
            ["bash", "-c", f"{run} --json --progress"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        server.kill()
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # stdout is the one JSON object: no bar in it
    assert summary["finished"] and summary["rounds_trained"] == [1, 2]
    shown = ("[hospital-a] training rounds", "[hospital-a] round 1/2", "batch", "update of round 1", "model of round")
    for text in shown:
        assert text in done.stderr, text
    assert "2/2 [" in done.stderr  # tqdm's counter
    assert "round 2/2: its model accuracy=" in done.stderr  # the lines still print, above the bars
