"""Small inline SVG charts for the report (no plotting library): a line chart with an optional step series on a
second axis and shaded bands, and a grouped bar chart with optional whiskers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
FONT = 'font-family="sans-serif" font-size="11"'


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 12))
    return ticks


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.4g}"


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    color: str | None = None
    style: str = "line"  # "line" | "points" | "step"
    right_axis: bool = False


@dataclass
class Band:
    x0: float
    x1: float
    label: str = ""


@dataclass
class _Frame:
    width: int
    height: int
    left: int = 58
    right: int = 52
    top: int = 28
    bottom: int = 42
    parts: list[str] = field(default_factory=list)

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str, y2_label: str = "",
               bands: Sequence[Band] = (), width: int = 720, height: int = 300) -> str:
    """Lines/points on the left axis, a step series (e.g. weight bits) on the right one, bands shaded behind."""
    f = _Frame(width, height)
    left = [s for s in series if not s.right_axis and s.points]
    right = [s for s in series if s.right_axis and s.points]
    xs = [x for s in series for x, _ in s.points] + [b.x1 for b in bands] + [b.x0 for b in bands]
    if not xs:
        return _empty(title, width, height)
    x_ticks = nice_ticks(min(xs), max(xs), 8)
    sx = _scale(x_ticks[0], x_ticks[-1], f.left, f.left + f.plot_w)
    ys = [y for s in left for _, y in s.points] or [0.0, 1.0]
    y_ticks = nice_ticks(min(ys), max(ys))
    sy = _scale(y_ticks[0], y_ticks[-1], f.top + f.plot_h, f.top)
    out = [_open(width, height, title)]
    for i, band in enumerate(bands):
        x0, x1 = sx(band.x0), sx(band.x1)
        if i % 2 == 0:
            out.append(f'<rect x="{x0:.1f}" y="{f.top}" width="{max(x1 - x0, 0):.1f}" height="{f.plot_h:.1f}" '
                       f'fill="#eef2f7"/>')
        if band.label and x1 - x0 > 14:
            out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{f.top + 11}" text-anchor="middle" {FONT} '
                       f'fill="#667">{escape(band.label)}</text>')
    out += _axes(f, x_ticks, y_ticks, sx, sy, x_label, y_label)
    if right:
        r_vals = [y for s in right for _, y in s.points]
        r_ticks = nice_ticks(min(r_vals), max(r_vals), 5)
        sr = _scale(r_ticks[0], r_ticks[-1], f.top + f.plot_h, f.top)
        x_end = f.left + f.plot_w
        for t in r_ticks:
            out.append(f'<text x="{x_end + 6}" y="{sr(t) + 4:.1f}" {FONT} fill="#555">{fmt(t)}</text>')
        out.append(f'<text transform="translate({width - 8},{f.top + f.plot_h / 2:.0f}) rotate(90)" '
                   f'text-anchor="middle" {FONT}>{escape(y2_label)}</text>')
    for i, s in enumerate([*left, *right]):
        color = s.color or PALETTE[i % len(PALETTE)]
        scale_y = sy if not s.right_axis else sr
        pts = sorted(s.points)
        if s.style == "points":
            out += [f'<circle cx="{sx(x):.1f}" cy="{scale_y(y):.1f}" r="3" fill="{color}"/>' for x, y in pts]
        else:
            coords = []
            for j, (x, y) in enumerate(pts):
                if s.style == "step" and j:
                    coords.append(f"{sx(x):.1f},{scale_y(pts[j - 1][1]):.1f}")
                coords.append(f"{sx(x):.1f},{scale_y(y):.1f}")
            dash = ' stroke-dasharray="5,3"' if s.style == "step" else ""
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} '
                       f'points="{" ".join(coords)}"/>')
    out.append(_legend([(s.name, s.color or PALETTE[i % len(PALETTE)]) for i, s in enumerate([*left, *right])],
                       f.left, height - 6))
    out.append("</svg>")
    return "".join(out)


def bar_chart(groups: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *, title: str,
              y_label: str, whiskers: Sequence[Sequence[tuple[float, float] | None]] | None = None,
              width: int = 720, height: int = 280, percent: bool = False) -> str:
    """Grouped bars: one group per ``groups`` entry, one bar per series; ``whiskers[s][g]`` = (low, high)."""
    f = _Frame(width, height)
    values = [v for _, vals in series for v in vals if v is not None]
    tops = values + [hi for ws in (whiskers or []) for w in ws if w for hi in w]
    if not values:
        return _empty(title, width, height)
    top = max(tops) * 1.05 if max(tops) > 0 else 1.0
    if percent and 0 < max(tops) <= 1.0:
        top = 1.0  # a share never needs an axis past 100%
    y_ticks = nice_ticks(min(0.0, min(values)), top)
    sy = _scale(y_ticks[0], y_ticks[-1], f.top + f.plot_h, f.top)
    out = [_open(width, height, title)]
    group_w = f.plot_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    out += _axes(f, [], y_ticks, None, sy, "", y_label, percent=percent)
    for g, name in enumerate(groups):
        gx = f.left + g * group_w
        out.append(f'<text x="{gx + group_w / 2:.1f}" y="{f.top + f.plot_h + 15:.1f}" text-anchor="middle" '
                   f'{FONT}>{escape(name)}</text>')
        for s, (label, vals) in enumerate(series):
            v = vals[g]
            if v is None:
                continue
            x = gx + group_w * 0.1 + s * bar_w
            y0, y1 = sy(max(y_ticks[0], 0.0)), sy(v)
            color = PALETTE[s % len(PALETTE)]
            shown = f"{v:.1%}" if percent else fmt(v)
            out.append(f'<rect x="{x:.1f}" y="{min(y0, y1):.1f}" width="{bar_w * 0.92:.1f}" '
                       f'height="{abs(y0 - y1):.1f}" fill="{color}"><title>{escape(label)} {escape(name)}: '
                       f'{shown}</title></rect>')
            w = whiskers[s][g] if whiskers else None
            label_y = min(y0, y1, sy(w[1]) if w else y1) - 3
            if w:
                cx = x + bar_w * 0.46
                out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{sy(w[0]):.1f}" y2="{sy(w[1]):.1f}" '
                           f'stroke="#333"/><line x1="{cx - 4:.1f}" x2="{cx + 4:.1f}" y1="{sy(w[1]):.1f}" '
                           f'y2="{sy(w[1]):.1f}" stroke="#333"/>')
            out.append(f'<text x="{x + bar_w * 0.46:.1f}" y="{label_y:.1f}" text-anchor="middle" '
                       f'{FONT} fill="#333">{shown}</text>')
    out.append(_legend([(label, PALETTE[s % len(PALETTE)]) for s, (label, _) in enumerate(series)], f.left,
                       height - 6))
    out.append("</svg>")
    return "".join(out)


def _open(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<rect width="{width}" height="{height}" fill="white"/>'
            f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-family="sans-serif" font-size="13" '
            f'font-weight="bold">{escape(title)}</text>')


def _empty(title: str, width: int, height: int) -> str:
    return (_open(width, height, title) + f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
            f'{FONT} fill="#888">no data</text></svg>')


def _axes(f: _Frame, x_ticks, y_ticks, sx, sy, x_label: str, y_label: str, percent: bool = False) -> list[str]:
    out = []
    x_end, y_end = f.left + f.plot_w, f.top + f.plot_h
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line x1="{f.left}" x2="{x_end:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        label = f"{t:.0%}" if percent else fmt(t)
        out.append(f'<text x="{f.left - 5}" y="{y + 4:.1f}" text-anchor="end" {FONT} fill="#555">{label}</text>')
    for t in x_ticks:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y_end:.1f}" y2="{y_end + 4:.1f}" stroke="#555"/>')
        out.append(f'<text x="{x:.1f}" y="{y_end + 15:.1f}" text-anchor="middle" {FONT} fill="#555">{fmt(t)}</text>')
    out.append(f'<line x1="{f.left}" x2="{x_end:.1f}" y1="{y_end:.1f}" y2="{y_end:.1f}" stroke="#555"/>')
    out.append(f'<line x1="{f.left}" x2="{f.left}" y1="{f.top}" y2="{y_end:.1f}" stroke="#555"/>')
    if x_label:
        out.append(f'<text x="{f.left + f.plot_w / 2:.0f}" y="{y_end + 29:.0f}" text-anchor="middle" {FONT}>'
                   f'{escape(x_label)}</text>')
    out.append(f'<text transform="translate(13,{f.top + f.plot_h / 2:.0f}) rotate(-90)" text-anchor="middle" '
               f'{FONT}>{escape(y_label)}</text>')
    return out


def _legend(entries: list[tuple[str, str]], x: float, y: float) -> str:
    out, cx = [], x
    for name, color in entries:
        out.append(f'<rect x="{cx:.0f}" y="{y - 9:.0f}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{cx + 14:.0f}" y="{y:.0f}" {FONT}>{escape(name)}</text>')
        cx += 24 + 6.5 * len(name)
    return "".join(out)
