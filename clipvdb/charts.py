"""Charts as inline SVG, drawn on the server: a page needs no JavaScript and no network to show
them. Three kinds: grouped bars (`bar_chart`), points joined by lines (`line_chart`: accuracy
against milliseconds per image, recall against milliseconds per query) and a histogram of counts
over bins (`histogram`). Each returns one <svg> element as text; the page puts the same numbers in
a <table> after it. A chart may carry a `note` under its title: what its numbers are measured
under (the trade-off chart: how many connections, workers and threads ran at once)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1d4ed8", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563")
WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 30, 50  # margins: the legend sits on the right
NOTE_HEIGHT = 14  # the room a note takes under the title


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(round(v, 10))
        v += step
    if out[-1] < hi:
        out.append(round(out[-1] + step, 10))
    return out


def fmt(v: float) -> str:
    """A tick or value label: at most 3 significant digits, no trailing zeros."""
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _text(x: float, y: float, s: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def tick_label(v: float, ticks_: Sequence[float]) -> str:
    """A tick's label with as many decimals as the step between ticks needs (0.025 -> 3)."""
    step = abs(ticks_[1] - ticks_[0]) if len(ticks_) > 1 else 1.0
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    return f"{v:,.{decimals}f}"


@dataclass(frozen=True)
class Axes:
    """What a chart says around its data: title, axis labels, a note under the title, the top of
    the y axis (recall: 1; None: the data's), and its size."""

    title: str
    x_label: str
    y_label: str
    note: str = ""
    y_max: float | None = None
    width: int = WIDTH
    height: int = HEIGHT


class _Frame:
    """Plot area, axes and legend shared by the three kinds."""

    def __init__(self, axes: Axes, y_range: tuple[float, float]):
        self.title, self.x_label, self.y_label, self.note = axes.title, axes.x_label, axes.y_label, axes.note
        self.width, self.height = width, height = axes.width, axes.height
        note = axes.note
        self.x0, self.x1 = LEFT, width - RIGHT
        self.y0, self.y1 = height - BOTTOM, TOP + (NOTE_HEIGHT if note else 0)  # y0: the bottom of the plot area
        self.yticks = ticks(*y_range)
        self.ylo, self.yhi = self.yticks[0], self.yticks[-1]
        self.parts: list[str] = []

    def y(self, v: float) -> float:
        span = (self.yhi - self.ylo) or 1.0
        return self.y0 - (v - self.ylo) / span * (self.y0 - self.y1)

    def axes(self) -> None:
        p = self.parts
        for t in self.yticks:
            yy = self.y(t)
            p.append(f'<line x1="{self.x0}" x2="{self.x1}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e5e7eb"/>')
            p.append(_text(self.x0 - 6, yy + 4, tick_label(t, self.yticks), "end"))
        p.append(f'<line x1="{self.x0}" x2="{self.x0}" y1="{self.y1}" y2="{self.y0}" stroke="#374151"/>')
        p.append(f'<line x1="{self.x0}" x2="{self.x1}" y1="{self.y0}" y2="{self.y0}" stroke="#374151"/>')
        p.append(_text((self.x0 + self.x1) / 2, self.height - 8, self.x_label))
        yl = (self.y0 + self.y1) / 2
        p.append(_text(14, yl, self.y_label, extra=f' transform="rotate(-90 14 {yl:.1f})"'))
        p.append(_text(self.width / 2, 18, self.title, extra=' font-weight="bold"'))
        if self.note:
            p.append(_text(self.width / 2, 18 + NOTE_HEIGHT, self.note, extra=' class="note" fill="#555"'))

    def legend(self, names: Sequence[str]) -> None:
        for i, name in enumerate(names):
            yy = self.y1 + 6 + i * 18
            self.parts.append(f'<rect x="{self.x1 + 14}" y="{yy}" width="12" height="12" fill="{colour(i)}"/>')
            self.parts.append(_text(self.x1 + 32, yy + 10, name, "start"))

    def svg(self) -> str:
        body = "\n".join(self.parts)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            f'viewBox="0 0 {self.width} {self.height}" width="{self.width}" height="{self.height}" '
            f'font-family="system-ui, sans-serif" font-size="11">'
            f"<title>{escape(self.title)}</title>\n{body}\n</svg>"
        )


def _range(values: list[float], *, zero: bool) -> tuple[float, float]:
    if not values:
        return (0.0, 1.0)
    lo, hi = min(values), max(values)
    if zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        hi = lo + (abs(lo) * 0.1 or 1.0)
    return lo, hi


def bar_chart(categories: Sequence[str], series: Mapping[str, Sequence[float | None]], axes: Axes) -> str:
    """Grouped bars: one group per category, one bar per series (None: no bar)."""
    values = [v for vs in series.values() for v in vs if v is not None]
    lo, hi = _range(values + ([axes.y_max] if axes.y_max is not None else []), zero=True)
    f = _Frame(axes, (lo, hi))
    f.axes()
    n_cat, n_ser = max(len(categories), 1), max(len(series), 1)
    group = (f.x1 - f.x0) / n_cat
    bar = group * 0.8 / n_ser
    for i, cat in enumerate(categories):
        gx = f.x0 + i * group + group * 0.1
        for j, (name, vs) in enumerate(series.items()):
            v = vs[i] if i < len(vs) else None
            if v is None:
                continue
            top, base = f.y(max(v, 0.0)), f.y(min(v, 0.0))
            f.parts.append(
                f'<rect x="{gx + j * bar:.1f}" y="{top:.1f}" width="{max(bar - 1, 1):.1f}" '
                f'height="{max(base - top, 0.5):.1f}" fill="{colour(j)}"><title>{escape(f"{name}, {cat}: {fmt(v)}")}'
                "</title></rect>"
            )
        label = cat if len(cat) <= 12 else cat[:11] + "…"
        f.parts.append(_text(f.x0 + (i + 0.5) * group, f.y0 + 14, label))
    f.legend(list(series))
    return f.svg()


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float, str]]], axes: Axes, *, lines: bool = True, labels: bool = True
) -> str:
    """Points (x, y, label) per series, joined in the given order when `lines`; each point is
    marked, and labelled on the chart when `labels` (a stage name), else in its tooltip only."""
    y_max = axes.y_max
    xs = [p[0] for ps in series.values() for p in ps]
    ys = [p[1] for ps in series.values() for p in ps]
    y_range = _range(ys, zero=False)
    if y_max is not None and max(ys, default=y_max) <= y_max:
        lo = min(ys, default=y_max)
        y_range = (lo if lo < y_max else y_max - 0.1 * (abs(y_max) or 1.0), y_max)
    f = _Frame(axes, y_range)
    f.axes()
    xt = ticks(*_range(xs, zero=True))
    xlo, xhi = xt[0], xt[-1]

    def x(v: float) -> float:
        return f.x0 + (v - xlo) / ((xhi - xlo) or 1.0) * (f.x1 - f.x0)

    for t in xt:
        f.parts.append(_text(x(t), f.y0 + 14, tick_label(t, xt)))
    for j, (name, ps) in enumerate(series.items()):
        c = colour(j)
        if lines and len(ps) > 1:
            path = " ".join(f"{x(px):.1f},{f.y(py):.1f}" for px, py, _ in ps)
            f.parts.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="1.5"/>')
        for px, py, label in ps:
            f.parts.append(
                f'<circle cx="{x(px):.1f}" cy="{f.y(py):.1f}" r="4" fill="{c}">'
                f"<title>{escape(f'{name} {label}: {fmt(px)}, {fmt(py)}')}</title></circle>"
            )
            if label and labels:
                f.parts.append(_text(x(px) + 6, f.y(py) - 6, label, "start", f' fill="{c}"'))
    f.legend(list(series))
    return f.svg()


def histogram(edges: Sequence[float], series: Mapping[str, Sequence[int]], axes: Axes) -> str:
    """Counts over len(edges) - 1 bins, the series' bars side by side within each bin."""
    n_bins = max(len(edges) - 1, 1)
    counts = [c for cs in series.values() for c in cs]
    f = _Frame(axes, _range([float(c) for c in counts], zero=True))
    f.axes()
    lo, hi = (edges[0], edges[-1]) if len(edges) > 1 else (0.0, 1.0)
    span = (hi - lo) or 1.0

    def x(v: float) -> float:
        return f.x0 + (v - lo) / span * (f.x1 - f.x0)

    xt = ticks(lo, hi)
    for t in xt:
        if lo <= t <= hi:
            f.parts.append(_text(x(t), f.y0 + 14, tick_label(t, xt)))
    n_ser = max(len(series), 1)
    for b in range(n_bins):
        left, right = x(edges[b]), x(edges[b + 1]) if b + 1 < len(edges) else x(hi)
        w = (right - left) / n_ser
        for j, (name, cs) in enumerate(series.items()):
            c = cs[b] if b < len(cs) else 0
            if not c:
                continue
            top = f.y(c)
            tip = f"{name}, {fmt(edges[b])}–{fmt(edges[min(b + 1, len(edges) - 1)])}: {c}"
            f.parts.append(
                f'<rect x="{left + j * w:.1f}" y="{top:.1f}" width="{max(w - 0.5, 0.5):.1f}" '
                f'height="{f.y0 - top:.1f}" fill="{colour(j)}">'
                f"<title>{escape(tip)}</title></rect>"
            )
    f.legend(list(series))
    return f.svg()
