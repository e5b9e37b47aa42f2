"""Small inline SVG charts for the fleet page: no script, no external asset, every label escaped.

``webhook/dashboard_pages.py`` calls :func:`column_chart` (throughput per hour, spend per day)
and :func:`bar_list` (spend per agent). Each returns an ``<svg>`` element as text; colours come
from CSS classes the page's style sheet defines (``s0``, ``s1``), so no inline style is needed
under the page's Content-Security-Policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 400
HEIGHT = 150
_TOP = 14
_BOTTOM = 22
_LEFT = 50


def _e(value: object) -> str:
    return escape(str(value), quote=True)


@dataclass(frozen=True)
class Column:
    """One column: a label under it, and stacked values (series 0 at the bottom)."""

    label: str
    values: tuple[float, ...]
    title: str


def _scale_top(largest: float) -> float:
    """A round top for the axis: 1, 2, 5, 10, 20, 50, … at or above ``largest``."""
    if largest <= 0:
        return 1.0
    step = 1.0
    while step * 10 < largest:
        step *= 10
    while step > largest:
        step /= 10
    for factor in (1.0, 2.0, 5.0, 10.0):
        if step * factor >= largest:
            return step * factor
    return step * 10


def _number(value: float, *, money: bool) -> str:
    if money:
        return money_text(value)
    return f"{value:g}"


def money_text(value: float) -> str:
    """Dollars as people read them: ``$0``, ``$0.0042``, ``$3.50``, ``$120``."""
    if value == 0:
        return "$0"
    if value < 0.01:
        return f"${value:.4f}"
    return f"${value:.2f}" if value < 100 else f"${value:.0f}"


def column_chart(
    columns: Sequence[Column], *, caption: str, money: bool = False, label_every: int = 1
) -> str:
    """Vertical stacked columns with a zero line, the axis top and a label under every
    ``label_every``-th column; each column's ``title`` shows on hover."""
    top = _scale_top(max((sum(c.values) for c in columns), default=0.0))
    plot_w = WIDTH - _LEFT - 6
    plot_h = HEIGHT - _TOP - _BOTTOM
    slot = plot_w / max(len(columns), 1)
    bar_w = max(slot * 0.7, 1.0)
    parts = [
        (
            f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
            f'role="img" aria-label="{_e(caption)}">'
        ),
        f"<title>{_e(caption)}</title>",
        (
            f'<line class="axis" x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{WIDTH - 6}" '
            f'y2="{_TOP + plot_h}"/>'
        ),
        f'<line class="grid" x1="{_LEFT}" y1="{_TOP}" x2="{WIDTH - 6}" y2="{_TOP}"/>',
        (
            f'<text class="tick" x="{_LEFT - 4}" y="{_TOP + 4}" text-anchor="end">'
            f"{_e(_number(top, money=money))}</text>"
        ),
        f'<text class="tick" x="{_LEFT - 4}" y="{_TOP + plot_h + 4}" text-anchor="end">0</text>',
    ]
    for i, column in enumerate(columns):
        x = _LEFT + i * slot + (slot - bar_w) / 2
        base = float(_TOP + plot_h)
        parts.append("<g>")
        parts.append(f"<title>{_e(column.title)}</title>")
        # An invisible full-height target, so an empty hour still shows its tooltip.
        parts.append(
            f'<rect class="hit" x="{x:.1f}" y="{_TOP}" width="{bar_w:.1f}" height="{plot_h}"/>'
        )
        for series, value in enumerate(column.values):
            if value <= 0:
                continue
            h = max(plot_h * value / top, 1.0)
            base -= h
            parts.append(
                f'<rect class="s{series}" x="{x:.1f}" y="{base:.1f}" '
                f'width="{bar_w:.1f}" height="{h:.1f}" rx="1.5"/>'
            )
        parts.append("</g>")
        if i % label_every == 0 or i == len(columns) - 1:
            parts.append(
                f'<text class="tick" x="{x + bar_w / 2:.1f}" y="{HEIGHT - 6}" '
                f'text-anchor="middle">{_e(column.label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def bar_list(rows: Sequence[tuple[str, float]], *, caption: str) -> str:
    """Horizontal bars, one per row (a name and an amount in dollars), largest first."""
    ordered = sorted(rows, key=lambda r: (-r[1], r[0]))
    row_h = 22
    height = max(len(ordered), 1) * row_h + 8
    name_w = 150
    plot_w = WIDTH - name_w - 70
    top = max((v for _, v in ordered), default=0.0) or 1.0
    parts = [
        (
            f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
            f'role="img" aria-label="{_e(caption)}">'
        ),
        f"<title>{_e(caption)}</title>",
    ]
    if not ordered:
        parts.append('<text class="tick" x="4" y="18">no agents yet</text>')
    for i, (name, value) in enumerate(ordered):
        y = 4 + i * row_h
        w = plot_w * value / top if value > 0 else 0.0
        short = name if len(name) <= 22 else name[:21] + "…"
        parts.append(f"<g><title>{_e(name)}: {_e(_number(value, money=True))}</title>")
        parts.append(f'<text class="name" x="4" y="{y + 15}">{_e(short)}</text>')
        parts.append(
            f'<rect class="s0" x="{name_w}" y="{y + 4}" width="{max(w, 1.0):.1f}" '
            f'height="{row_h - 8}" rx="1.5"/>'
        )
        parts.append(
            f'<text class="tick" x="{name_w + max(w, 1.0) + 6:.1f}" y="{y + 15}">'
            f"{_e(_number(value, money=True))}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


__all__ = ["Column", "bar_list", "column_chart", "money_text"]
