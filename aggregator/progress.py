"""The round table ``attestfl serve`` prints on stdout after its ready line, and when it may
exit with ``--exit-when-finished``.

One line per round, once the round is applied and its model evaluated by the sites that trained
it (the model round r produced is evaluated at the start of round r + 1, or after the last round
as the final model)::

    round  sites  accuracy      loss  seconds
        1      3    0.8917    0.3410      2.1

``--progress json`` prints the same as one JSON object per line (``{"round": 1, ...}``), so
stdout stays machine-readable; ``--progress none`` prints nothing. The structured log on stderr is
unchanged. The table only reads the driver's history (what the audit log already recorded).
"""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

from aggregator.rounds import RoundDriver, weighted_metrics

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
        while self.printed + 1 < current:
            r = self.printed + 1
            participants, digest, _, _ = history.get(r, ({}, None, {}, {}))
            _, _, metrics, examples = history.get(r + 1, ({}, None, {}, {}))
            evaluated = set(metrics) >= set(participants)
            last = r == driver.config.rounds
            waited = last and self.finished_at is not None and now - self.finished_at > FINAL_METRICS_GRACE_SECONDS
            if driver.config.evaluate and not evaluated and not waited and (r + 1 == current or last):
                break  # the sites are still evaluating this round's model
            self._line(r, participants, digest, weighted_metrics(metrics, examples))
            self.printed = r
        if finished and self.printed >= driver.config.rounds and self.done_at is None:
            self.done_at = now

    def _line(self, r: int, participants: dict[str, Any], digest: str | None, metrics: dict[str, float]) -> None:
        seconds = self.closed.get(r, time.monotonic()) - self.opened.get(r, self.closed.get(r, time.monotonic()))
        if self.form == "json":
            self._say(
                json.dumps(
                    {
                        "round": r,
                        "sites": len(participants),
                        "participants": sorted(participants),
                        "metrics": metrics,
                        "seconds": round(seconds, 3),
                        "model_sha256": digest,
                    }
                )
            )
            return
        if not self._header:
            self._say(f"{'round':>5}  {'sites':>5}  {'accuracy':>8}  {'loss':>8}  {'seconds':>7}")
            self._header = True

        def cell(name: str) -> str:
            return f"{metrics[name]:>8.4f}" if name in metrics else f"{'-':>8}"

        self._say(f"{r:>5}  {len(participants):>5}  {cell('accuracy')}  {cell('loss')}  {seconds:>7.1f}")

    def finished(self) -> bool:
        """Training is finished, every round's line printed, and the sites had time to see it."""
        return self.done_at is not None and time.monotonic() - self.done_at >= LINGER_SECONDS
