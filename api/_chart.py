"""The daily usage chart, drawn on the server as SVG (no script, no inline styles)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from html import escape

WIDTH = 720
HEIGHT = 220
_LEFT = 56  # room for the y-axis labels
_RIGHT = 8
_TOP = 12
_BOTTOM = 28  # room for the x-axis labels


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is >= ``value`` (at least 10)."""
    step = 10
    while True:
        for m in (1, 2, 5):
            if step * m >= value:
                return step * m
        step *= 10


def _short(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    if n >= 1_000:
        return f"{n / 1_000:g}k"
    return str(n)


def usage_svg(
    days: Sequence[tuple[date, int]],
    *,
    width: int = WIDTH,
    label_every: int = 7,
    name: str = "chart",
) -> str:
    """A bar per day of credits spent; ``days`` oldest first. Returns the ``<svg>`` markup.

    The SVG scales to its box, so its text shrinks with it: a phone gets its own
    narrower drawing (``width`` about its CSS width, fewer date labels) in which
    11-unit text stays about 11 px, instead of the desktop one shrunk to half.
    ``name`` keeps the element ids of two charts on one page apart.
    """
    total = sum(v for _, v in days)
    top = _nice_ceiling(max((v for _, v in days), default=0))
    plot_w = width - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    n = max(len(days), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.7, 1.0)
    if days:
        first, last = days[0][0], days[-1][0]
        busiest = max(days, key=lambda d: d[1])
        summary = f"{total:,} credits spent from {first:%b} {first.day} to {last:%b} {last.day}" + (
            f"; busiest day {busiest[0]:%b} {busiest[0].day} with {busiest[1]:,}." if total else "."
        )
    else:
        summary = "No usage yet."
    parts = [
        f'<svg class="chart {name}" viewBox="0 0 {width} {HEIGHT}" width="100%" role="img" '
        f'aria-labelledby="{name}-title {name}-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{name}-title">Credits spent per day (UTC)</title>',
        f'<desc id="{name}-desc">{escape(summary)}</desc>',
    ]
    for i in range(6):  # grid lines at fifths: whole numbers, as the top is 1, 2 or 5 x 10^k
        value = top * i // 5
        y = _TOP + plot_h - plot_h * i / 5
        parts.append(
            f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{width - _RIGHT}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_short(value)}</text>"
        )
    for i, (day, value) in enumerate(days):
        h = plot_h * value / top if top else 0
        x = _LEFT + i * slot + (slot - bar_w) / 2
        y = _TOP + plot_h - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
            f"<title>{day:%b} {day.day}: {value:,} credits</title></rect>"
        )
        if i % label_every == (len(days) - 1) % label_every:  # every nth day, ending today
            # Today's label ends at its bar: centred, it would run off the right edge.
            is_today = i == len(days) - 1
            parts.append(
                f'<text class="axis" x="{x + (bar_w if is_today else bar_w / 2):.1f}" '
                f'y="{HEIGHT - 8}" text-anchor="{"end" if is_today else "middle"}">'
                f"{day:%b} {day.day}</text>"
            )
    parts.append(
        f'<line class="baseline" x1="{_LEFT}" y1="{_TOP + plot_h}" '
        f'x2="{width - _RIGHT}" y2="{_TOP + plot_h}"/>'
    )
    parts.append("</svg>")
    return "".join(parts)
