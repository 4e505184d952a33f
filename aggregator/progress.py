"""The round table ``attestfl serve`` prints on stdout after its ready line, and when it may
exit with ``--exit-when-finished``.

Rounds are numbered as everywhere else (docs/protocol.md, the audit log, the site's metrics.csv,
the demo): round r's model is the global model *before* round r's training (round 1: the initial
model), and the final model is round ``rounds + 1``. One line per round once it is applied: the
sites that trained in it, the accuracy and loss of its model (evaluated by the sites at the
round's start, weighted by their held-out examples) and its duration; then one line for the final
model once the sites evaluated it::

    round  sites  accuracy      loss  seconds
        1      3    0.3417    1.0910      2.1
        2      3    0.8917    0.3410      1.9
        3      3    0.9310    0.2150        -  final model

``--progress json`` prints the same as one JSON object per line (``{"round": 1, ...}``, with
``model_sha256`` the digest of the round's model and ``"final": true`` on the last), so stdout
stays machine-readable; ``--progress none`` prints nothing. The structured log on stderr is
unchanged. The table only reads the driver's history (what the audit log already recorded).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, TextIO

from aggregator.rounds import RoundDriver, weighted_metrics
from aggregator.service import UpdateRefused

PROGRESS_FORMATS = ("table", "json", "none")
#: After the last round: how long to wait for the sites' evaluation of the final model at most.
FINAL_METRICS_GRACE_SECONDS = 30.0
#: After the last line: time for the sites to see that training is finished before the server stops.
LINGER_SECONDS = 2.0


class RoundTable:
    """Follows a :class:`RoundDriver` (call :meth:`update` periodically) and prints each round."""

    def __init__(self, driver: RoundDriver, out: TextIO | None, form: str = "table") -> None:
        self.driver, self.out, self.form = driver, out if form != "none" else None, form
        self.printed = driver.round - 1  # a resumed aggregator prints from the round it resumes
        self.opened = {driver.round: time.monotonic()}
        self.closed: dict[int, float] = {}
        self.finished_at: float | None = None
        self.done_at: float | None = None
        self._header = False
        #: The digest of each round's model (the model round r - 1 produced; the first one as loaded).
        self.digests: dict[int, str] = {}
        try:
            self.digests[driver.round] = hashlib.sha256(driver.model_bytes(driver.round)).hexdigest()
        except UpdateRefused:  # no model kept for it: the digest is shown as null
            pass

    def _say(self, text: str) -> None:
        if self.out is not None:
            try:
                print(text, file=self.out, flush=True)
            except (OSError, ValueError):  # stdout closed (e.g. `serve | head -1`): stop printing, keep serving
                self.out = None

    def update(self) -> None:
        driver, now = self.driver, time.monotonic()
        with driver._lock:  # a consistent view of the history
            current, finished = driver.round, driver.finished
            history = {
                r: (dict(rec.participants), rec.model_sha256, dict(rec.metrics), dict(rec.examples))
                for r, rec in driver.history.items()
            }
        for r in range(self.printed + 1, current):
            self.closed.setdefault(r, now)
        self.opened.setdefault(current, now)
        if finished and self.finished_at is None:
            self.finished_at = now
        rounds = driver.config.rounds
        while self.printed + 1 < current:  # round r is applied: its sites, its model's metrics, its time
            r = self.printed + 1
            participants, produced, metrics, examples = history.get(r, ({}, None, {}, {}))
            if produced is not None:
                self.digests[r + 1] = produced
            self._line(r, sorted(participants), weighted_metrics(metrics, examples))
            self.printed = r
        final = rounds + 1
        if finished and self.printed == rounds:  # the final model, once the sites that trained evaluated it
            trained, _, _, _ = history.get(rounds, ({}, None, {}, {}))
            _, _, metrics, examples = history.get(final, ({}, None, {}, {}))
            evaluated = set(metrics) >= set(trained)
            waited = self.finished_at is not None and now - self.finished_at > FINAL_METRICS_GRACE_SECONDS
            if evaluated or waited or not driver.config.evaluate:
                self._line(final, sorted(metrics), weighted_metrics(metrics, examples), last=True)
                self.printed = final
        if finished and self.printed >= final and self.done_at is None:
            self.done_at = now

    def _line(self, r: int, sites: list[str], metrics: dict[str, float], last: bool = False) -> None:
        """Round r: the sites that trained in it (for the final model: that evaluated it), its model's metrics."""
        seconds = self.closed.get(r, time.monotonic()) - self.opened.get(r, self.closed.get(r, time.monotonic()))
        if self.form == "json":
            line: dict[str, Any] = {
                "round": r,
                "sites": len(sites),
                "participants": sites,
                "metrics": metrics,
                "seconds": None if last else round(seconds, 3),
                "model_sha256": self.digests.get(r),
            }
            if last:
                line["final"] = True
            self._say(json.dumps(line))
            return
        if not self._header:
            self._say(f"{'round':>5}  {'sites':>5}  {'accuracy':>8}  {'loss':>8}  {'seconds':>7}")
            self._header = True

        def cell(name: str) -> str:
            return f"{metrics[name]:>8.4f}" if name in metrics else f"{'-':>8}"

        time_cell = f"{'-':>7}  final model" if last else f"{seconds:>7.1f}"
        self._say(f"{r:>5}  {len(sites):>5}  {cell('accuracy')}  {cell('loss')}  {time_cell}")

    def finished(self) -> bool:
        """Training is finished, every round's line printed, and the sites had time to see it."""
        return self.done_at is not None and time.monotonic() - self.done_at >= LINGER_SECONDS
