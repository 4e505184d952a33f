"""The guides run as written: every ``sh``/``bash`` block of each page, in order, as one bash
script (``set -euo pipefail``) in an empty directory, with ``attestfl`` on PATH (this checkout)
and the simulated TEE. A block that must not run (it needs a cluster, hardware, another
organisation) is marked by an HTML comment on the line before its fence::

    <!-- not run: needs a Kubernetes cluster -->

and is counted: the test states how many blocks each page skips by marker, so a new unmarked
block runs and a marker cannot silently swallow a runnable one."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_operator_journey import shim

ROOT = Path(__file__).resolve().parents[1]
SHELLS = ("sh", "bash", "shell")
MARKER = re.compile(r"^\s*<!--\s*not run:\s*(?P<why>[^>]+?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[A-Za-z0-9_-]*)\s*$")

#: page -> how many shell blocks it skips by marker (and why: the markers say); None: not
#: asserted (the auditors' page is another area's; it has no shell block yet).
PAGES: dict[str, int | None] = {"operators.md": 2, "sites.md": 1, "auditors.md": None}
#: The runs: pages run one after another in one directory. The auditors' page runs after the
#: operators' quick start, whose audit log (fl/aggregator/audit-log) it can verify.
RUNS = {"operators": ("operators.md", "auditors.md"), "sites": ("sites.md",)}
#: Pages that must have at least one runnable block.
REQUIRED = ("operators.md", "sites.md")


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    code: str
    skipped: str | None  # the marker's reason


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a markdown page, with the ``not run`` marker before each, if any."""
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, start = fence.group("indent"), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous)
        found.append(Block(start + 1, fence.group("lang"), "\n".join(body), marker.group("why") if marker else None))
        i += 1
    return found


def test_markers_only_mark_shell_blocks() -> None:
    for page in PAGES:
        if not (ROOT / "docs" / page).exists():
            continue
        text = (ROOT / "docs" / page).read_text()
        markers = sum(1 for line in text.splitlines() if MARKER.match(line))
        skipped = [b for b in blocks(text) if b.skipped is not None]
        assert markers == len(skipped), f"{page}: a `not run` marker is not right before a code block"
        assert all(b.lang in SHELLS for b in skipped), f"{page}: a `not run` marker before a non-shell block"


@pytest.mark.parametrize("run", sorted(RUNS))
def test_the_guide_runs_as_written(run: str, tmp_path: Path) -> None:
    script = ["set -euo pipefail"]
    counts = []
    for page in RUNS[run]:
        path = ROOT / "docs" / page
        found = [b for b in blocks(path.read_text()) if b.lang in SHELLS] if path.exists() else []
        runnable = [b for b in found if b.skipped is None]
        skipped = [b for b in found if b.skipped is not None]
        if PAGES[page] is not None:
            assert len(skipped) == PAGES[page], f"{page}: skipped by marker: {[(b.line, b.skipped) for b in skipped]}"
        assert runnable or page not in REQUIRED, f"{page}: no runnable shell block"
        for block in runnable:
            script += [f"echo '--- docs/{page} line {block.line}' >&2", block.code]
        counts.append(f"docs/{page}: ran {len(runnable)} shell blocks, skipped {len(skipped)} by marker")
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=tmp_path,
        env=shim(tmp_path),
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    where = [line for line in done.stderr.splitlines() if line.startswith("--- docs/")]
    assert done.returncode == 0, (
        f"exit {done.returncode} in the block after {where[-1] if where else '?'}\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    print("\n".join(counts))
