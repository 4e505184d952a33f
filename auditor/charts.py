"""Inline SVG charts for the auditor's report: no script, no external asset, nothing to install.

:func:`line_chart` draws one line per series (sites, and an overall line), :func:`bar_chart`
one bar per x. Every data point is an element carrying its values (``data-series``,
``data-x``, ``data-y``) and a ``<title>`` a browser shows on hover; every label is escaped
(series names are site ids, which the reader does not trust).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 160, 34, 44
#: Colour-blind-safe palette (Okabe-Ito), then grey for anything beyond.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
MAX_SERIES = 24

Point = tuple[float, float]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float) -> str:
    return f"{value:.6g}"


def _ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values covering [low, high] (whole numbers only with ``integer``)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = float(max(1, math.ceil(step)))
    first = math.floor(low / step) * step
    ticks: list[float] = []
    value = first
    while value <= high + step * 1e-9 and len(ticks) < 20:
        ticks.append(round(value, 12))
        value += step
    return ticks


class _Frame:
    def __init__(
        self,
        xs: Sequence[float],
        ys: Sequence[float],
        y_range: tuple[float, float] | None,
        x_pad: float = 0.0,
        integer: bool = False,
    ) -> None:
        self.x_low, self.x_high = (min(xs) - x_pad, max(xs) + x_pad) if xs else (0.0, 1.0)
        if self.x_high == self.x_low:
            self.x_low, self.x_high = self.x_low - 0.5, self.x_high + 0.5
        if y_range is not None:
            low, high = y_range
        else:
            low, high = (min(0.0, min(ys)), max(ys)) if ys else (0.0, 1.0)
        self.y_ticks = _ticks(low, high if high > low else low + 1.0, integer=integer)
        self.y_low, self.y_high = self.y_ticks[0], self.y_ticks[-1]

    def x(self, value: float) -> float:
        return LEFT + (value - self.x_low) / (self.x_high - self.x_low) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return HEIGHT - BOTTOM - (value - self.y_low) / (self.y_high - self.y_low) * (HEIGHT - TOP - BOTTOM)


def _axes(frame: _Frame, x_values: Sequence[float], title: str, x_label: str, y_label: str) -> list[str]:
    parts = [
        f'<text x="{LEFT}" y="18" class="chart-title" font-size="14" font-weight="600">{_e(title)}</text>',
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="#57606a"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#57606a"/>',
    ]
    for tick in frame.y_ticks:
        y = frame.y(tick)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#d0d7de" stroke-width="0.5"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_num(tick)}</text>'
        )
    shown = sorted(set(x_values))
    stride = max(1, math.ceil(len(shown) / 12))
    for value in shown[::stride]:
        x = frame.x(value)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11">{_num(value)}</text>'
        )
    parts.append(
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{HEIGHT - 8}" text-anchor="middle" font-size="12">'
        f"{_e(x_label)}</text>"
        f'<text x="14" y="{(TOP + HEIGHT - BOTTOM) / 2:.0f}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2:.0f})">{_e(y_label)}</text>'
    )
    return parts


def _svg(chart_id: str, title: str, body: list[str]) -> str:
    return (
        f'<svg id="{_e(chart_id)}" class="chart" role="img" aria-label="{_e(title)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">' + "".join(body) + "</svg>"
    )


def line_chart(
    series: Mapping[str, Sequence[Point]],
    *,
    chart_id: str,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    emphasise: str | None = None,
) -> str:
    """One polyline and its points per series (in the mapping's order; ``emphasise`` drawn thicker)."""
    names = list(series)[:MAX_SERIES]
    points = {name: sorted((x, y) for x, y in series[name] if math.isfinite(x) and math.isfinite(y)) for name in names}
    xs = [x for name in names for x, _ in points[name]]
    ys = [y for name in names for _, y in points[name]]
    frame = _Frame(xs, ys, y_range)
    body = _axes(frame, xs, title, x_label, y_label)
    for number, name in enumerate(names):
        colour = "#24292f" if name == emphasise else PALETTE[number % len(PALETTE)]
        width = 3 if name == emphasise else 1.5
        coords = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in points[name])
        body.append(f'<g class="series" data-series="{_e(name)}">')
        if len(points[name]) > 1:
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{width}" points="{coords}"/>')
        for x, y in points[name]:
            body.append(
                f'<circle class="point" cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3.5" fill="{colour}" '
                f'data-series="{_e(name)}" data-x="{_num(x)}" data-y="{_num(y)}">'
                f"<title>{_e(name)}: {_e(x_label)} {_num(x)}, {_e(y_label)} {_num(y)}</title></circle>"
            )
        body.append("</g>")
        legend_y = TOP + 4 + number * 16
        body.append(
            f'<rect x="{WIDTH - RIGHT + 12}" y="{legend_y}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{WIDTH - RIGHT + 26}" y="{legend_y + 9}" font-size="11">{_e(name[:22])}</text>'
        )
    return _svg(chart_id, title, body)


def bar_chart(points: Sequence[Point], *, chart_id: str, title: str, x_label: str, y_label: str) -> str:
    """One bar per point (x: a round number)."""
    clean = sorted((x, y) for x, y in points if math.isfinite(x) and math.isfinite(y))
    xs = [x for x, _ in clean]
    frame = _Frame(xs, [y for _, y in clean], None, x_pad=0.6, integer=all(y == int(y) for _, y in clean))
    body = _axes(frame, xs, title, x_label, y_label)
    slot = (frame.x(1.0) - frame.x(0.0)) if xs else 40.0
    width = max(2.0, min(40.0, slot * 0.6))
    for x, y in clean:
        top, base = frame.y(y), frame.y(max(frame.y_low, 0.0))
        body.append(
            f'<rect class="point" x="{frame.x(x) - width / 2:.1f}" y="{min(top, base):.1f}" width="{width:.1f}" '
            f'height="{abs(base - top):.1f}" fill="{PALETTE[0]}" data-series="{_e(y_label)}" data-x="{_num(x)}" '
            f'data-y="{_num(y)}"><title>{_e(x_label)} {_num(x)}: {_num(y)}</title></rect>'
        )
    return _svg(chart_id, title, body)


__all__ = ["bar_chart", "line_chart"]
