"""Figures, and their three renderings: a text table, JSON, and a hand-written SVG chart."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import escape

__all__ = [
    "NO_PLACEHOLDER",
    "OVERHEAD",
    "SCAN",
    "SERVER",
    "SERVER_CALLS",
    "SHARED_STORE",
    "UPSTREAM",
    "Figure",
    "Panel",
    "Target",
    "format_table",
    "to_json",
    "to_svg",
    "write_atomically",
]

Status = Literal["pass", "miss", "info", "skipped"]
Unit = Literal["ratio", "count", "µs"]


@dataclass(frozen=True)
class Target:
    """``value op bound``, e.g. ``<= 1.05``."""

    op: Literal["<=", ">=", "=="]
    bound: float

    def met(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.op == "<=":
            return value <= self.bound
        if self.op == ">=":
            return value >= self.bound
        return value == self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass(frozen=True)
class Panel:
    """A panel of the chart. ``bars`` False lists the values (counts, or ratios whose
    scale would say nothing) as text; ``baseline`` is where the bars start (1.0 for
    overhead ratios, so that the overhead is what shows)."""

    title: str
    baseline: float = 0.0
    bars: bool = True


@dataclass(frozen=True)
class Figure:
    """One measured ratio or count, with what it is compared to.

    ``detail`` holds absolute times and other context: printed for information only.
    A figure in µs (case 5) is for information only too: it never has a target.
    ``skipped``: the case could not be measured here (a missing optional dependency);
    ``value`` is NaN and ``detail`` says why.
    """

    case: str
    name: str
    value: float
    unit: Unit
    panel: Panel
    target: Target | None = None
    detail: str = ""
    #: Raw per-round values and the like, kept in the JSON only.
    extra: dict[str, list[float] | float] = field(default_factory=dict)
    skipped: bool = False

    @property
    def status(self) -> Status:
        if self.skipped:
            return "skipped"
        if self.target is None:
            return "info"
        return "pass" if self.target.met(self.value) else "miss"


#: The chart's panels, in the order of the cases.
OVERHEAD = Panel("1. In-process: wrapped / bare time (lower is better; axis from 1)", 1.0)
NO_PLACEHOLDER = Panel("1d. Pages without placeholders: wrapped / bare time", bars=False)
SCAN = Panel("2. Speed as a fraction of one bytes.find pass (higher is better)")
SERVER = Panel("3. Real server on loopback: ratios between the three variants")
SERVER_CALLS = Panel("3. Upstream calls during the server case", bars=False)
UPSTREAM = Panel("4. Upstream calls", bars=False)
SHARED_STORE = Panel("5. Shared token store on Redis: hit times and upstream calls", bars=False)


def _number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


# -- text --------------------------------------------------------------------------------


def format_table(figures: Sequence[Figure]) -> str:
    rows = [("case", "figure", "value", "target", "result", "for information")]
    for figure in figures:
        rows.append(
            (
                figure.case,
                figure.name,
                _number(figure.value),
                str(figure.target) if figure.target else "",
                figure.status,
                figure.detail,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    lines = []
    for number, row in enumerate(rows):
        cells = [row[column].ljust(widths[column]) for column in range(5)]
        cells[2] = row[2].rjust(widths[2])
        lines.append("  ".join([*cells, row[5]]).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in [*widths, len(row[5])]))
    return "\n".join(lines)


# -- JSON --------------------------------------------------------------------------------


def to_json(figures: Sequence[Figure], meta: dict[str, Any]) -> str:
    items = []
    for figure in figures:
        item = asdict(figure)
        item["panel"] = figure.panel.title
        item["target"] = (
            None
            if figure.target is None
            else {"op": figure.target.op, "value": figure.target.bound}
        )
        item["status"] = figure.status
        items.append(_finite(item))
    summary = {
        status: sum(1 for figure in figures if figure.status == status)
        for status in ("pass", "miss", "info", "skipped")
    }
    document = {"meta": meta, "summary": summary, "figures": items}
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    """NaN (a figure that could not be measured here) as JSON null, at any depth."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


# -- SVG ---------------------------------------------------------------------------------

_ROW = 22
_CHAR = 6.8  # average glyph width at font-size 12, for laying out labels
_BAR_WIDTH = 330
_COLORS = {"pass": "#2e7d32", "miss": "#c62828", "info": "#78909c", "skipped": "#d5d9db"}


def _label(figure: Figure) -> str:
    return f"{figure.case}  {figure.name}"


def _value_text(figure: Figure) -> str:
    if figure.skipped:
        return "skipped"
    text = _number(figure.value)
    if figure.target is not None:
        text += f"   target {figure.target}: {figure.status}"
    return text


def _scale(panel: Panel, figures: Sequence[Figure]) -> tuple[float, float]:
    """(low, high) of a panel's axis: from its baseline to a little past the largest
    value or target."""
    high = panel.baseline
    for figure in figures:
        if not math.isnan(figure.value):
            high = max(high, figure.value)
        if figure.target is not None:
            high = max(high, figure.target.bound)
    span = high - panel.baseline
    return panel.baseline, high + (span * 0.08 if span > 0 else 1.0)


def to_svg(figures: Sequence[Figure], *, title: str, subtitle: str) -> str:
    """Hand-written SVG: one panel per ``Panel``, horizontal bars on the panel's own linear
    axis, a dashed tick at the target; bars are green (met), red (missed) or grey (info)."""
    panels: dict[Panel, list[Figure]] = {}
    for figure in figures:
        panels.setdefault(figure.panel, []).append(figure)
    label_width = int(max((len(_label(f)) for f in figures), default=10) * _CHAR) + 24
    text_width = int(max((len(_value_text(f)) for f in figures), default=10) * _CHAR) + 24
    bar_left = label_width + 8
    width = bar_left + _BAR_WIDTH + 12 + text_width
    height = 76 + sum(30 + _ROW * len(items) + 16 for items in panels.values()) + 20
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="system-ui, -apple-system, '
        f'Segoe UI, Helvetica, Arial, sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="16" y="26" font-size="16" font-weight="600">{escape(title)}</text>',
        f'<text x="16" y="46" fill="#555">{escape(subtitle)}</text>',
    ]
    y = 76
    for panel, items in panels.items():
        out.append(f'<text x="16" y="{y + 14}" font-weight="600">{escape(panel.title)}</text>')
        low, high = _scale(panel, items)
        if panel.bars:
            out.append(
                f'<text x="{bar_left + _BAR_WIDTH}" y="{y + 14}" text-anchor="end" '
                f'fill="#777">axis {escape(_number(low))} to {escape(_number(high))}</text>'
            )
        y += 26
        if panel.bars:
            out.append(
                f'<line x1="{bar_left}" y1="{y}" x2="{bar_left}" '
                f'y2="{y + _ROW * len(items)}" stroke="#999"/>'
            )
        for figure in items:
            out.append(
                f'<text x="{label_width}" y="{y + 15}" text-anchor="end">'
                f"{escape(_label(figure))}</text>"
            )
            if panel.bars:
                out.extend(_bar(figure, y, bar_left, low, high))
                text_x = bar_left + _BAR_WIDTH + 12
            else:
                out.append(
                    f'<circle cx="{bar_left + 6}" cy="{y + 11}" r="5" '
                    f'fill="{_COLORS[figure.status]}"/>'
                )
                text_x = bar_left + 18
            out.append(f'<text x="{text_x}" y="{y + 15}">{escape(_value_text(figure))}</text>')
            y += _ROW
        y += 20
    out.append(
        f'<text x="16" y="{height - 12}" fill="#777">Green: target met. Red: target missed. '
        f"Grey: for information (light grey: skipped). Dashed tick: the target. "
        f"Each panel has its own axis.</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _bar(figure: Figure, y: int, left: int, low: float, high: float) -> list[str]:
    def x(value: float) -> float:
        return left + _BAR_WIDTH * (min(max(value, low), high) - low) / (high - low)

    value = low if math.isnan(figure.value) else figure.value
    parts = [
        f'<rect x="{left}" y="{y + 4}" width="{x(value) - left:.1f}" height="{_ROW - 8}" '
        f'fill="{_COLORS[figure.status]}" rx="2"/>'
    ]
    if figure.target is not None:
        tick = x(figure.target.bound)
        parts.append(
            f'<line x1="{tick:.1f}" y1="{y + 1}" x2="{tick:.1f}" y2="{y + _ROW - 1}" '
            f'stroke="#222" stroke-width="1.5" stroke-dasharray="3,2"/>'
        )
    return parts


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` via a ``.tmp`` sibling, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
