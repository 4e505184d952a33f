"""Progress bars for the steps of ``attestfl site run`` a person waits for: each round's training,
and the model download and update upload when they are larger than a few MB.

Bars go to the site's stderr, only when it is a terminal or when asked (``site run --progress``);
never to stdout, so ``--json`` output stays one JSON object, and never with ``--quiet``. The
per-round lines are written above the bars (``tqdm.write``), not through them.

Training: a bar over the task's rounds, and, when the trainer reports its steps, one over the
current round's steps. A trainer reports them from inside ``train(model)``::

    from fedsite.progress import advance

    for epoch in range(EPOCHS):
        ...                                  # one epoch of local training
        advance(total=EPOCHS, unit="epoch")  # or once per batch, with total = the batches per round

:func:`advance` does nothing when no bar is shown (a library caller, a log file, ``--quiet``).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

#: Downloads and uploads at least this large show a bar.
PROGRESS_BYTES = 4 * 1024 * 1024

_current: contextvars.ContextVar[_RoundSteps | None] = contextvars.ContextVar("attestfl_round_steps", default=None)


def advance(steps: int = 1, *, total: int | None = None, unit: str = "step") -> None:
    """Report ``steps`` more steps of this round's local training (of ``total``, when known)."""
    current = _current.get()
    if current is not None:
        current.advance(steps, total, unit)


def wanted(stream: TextIO | None, forced: bool = False) -> bool:
    """Bars on ``stream``: only when asked, or when it is a terminal."""
    if stream is None:
        return False
    if forced:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):
        return False


class _RoundSteps:
    def __init__(self, bars: SiteBars, description: str) -> None:
        self.bars, self.description = bars, description
        self.bar: Any = None

    def advance(self, steps: int, total: int | None, unit: str) -> None:
        if self.bar is None:
            self.bar = self.bars.bar(total=total, desc=self.description, unit=unit, position=1)
        elif total is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SiteBars:
    """The bars of one site's run on ``stream`` (None: no bars; lines are printed to ``lines``)."""

    def __init__(self, site_id: str, stream: TextIO | None, lines: TextIO | None = None) -> None:
        self.site_id, self.stream = site_id, stream
        self.lines = lines if lines is not None else stream
        self.rounds: Any = None

    @property
    def enabled(self) -> bool:
        return self.stream is not None

    def bar(self, **options: Any) -> Any:
        from tqdm import tqdm

        return tqdm(file=self.stream, leave=False, dynamic_ncols=True, **options)

    def say(self, text: str) -> None:
        """A progress line, above the bars when there are bars."""
        if self.lines is None:
            return
        if self.stream is not None and self.lines is self.stream:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
            self.stream.flush()
        else:
            print(text, file=self.lines, flush=True)

    @contextmanager
    def training(self, round_number: int, rounds_total: int) -> Iterator[None]:
        """Around one round's ``train(model)``: the rounds bar, and the trainer's steps bar."""
        if self.stream is None:
            yield
            return
        if self.rounds is None:
            description = f"[{self.site_id}] training rounds"
            self.rounds = self.bar(total=rounds_total, desc=description, unit="round", position=0)
            self.rounds.update(round_number - 1)
        steps = _RoundSteps(self, f"[{self.site_id}] round {round_number}/{rounds_total}")
        token = _current.set(steps)
        try:
            yield
        finally:
            _current.reset(token)
            steps.close()
        self.rounds.update(max(0, round_number - self.rounds.n))

    @contextmanager
    def transfer(self, total: int, description: str) -> Iterator[Callable[[int], None] | None]:
        """A bytes bar for a download or upload of ``total`` bytes: yields the function to call with
        each chunk's size, or None (no bars, or smaller than :data:`PROGRESS_BYTES`)."""
        if self.stream is None or total < PROGRESS_BYTES:
            yield None
            return
        bar = self.bar(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, position=1)
        try:
            yield bar.update
        finally:
            bar.close()

    def close(self) -> None:
        if self.rounds is not None:
            self.rounds.close()
            self.rounds = None
