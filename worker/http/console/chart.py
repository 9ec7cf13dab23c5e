"""The stats page's chart as geometry: sent and failed bars per hour, scaled to a fixed SVG box. Pure; the
template draws the rectangles (SVG attributes, no inline style: the CSP stays strict)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 720, 200
LEFT, BOTTOM, TOP = 40, 24, 10  # room for the axis labels


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str  # "sent" | "failed": the CSS class
    title: str  # the tooltip: hour and count


@dataclass(frozen=True)
class Chart:
    bars: tuple[Bar, ...]
    peak: int  # the top of the scale
    labels: tuple[tuple[float, str], ...]  # (x, "HH:00") under every fourth hour
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    base: float = HEIGHT - BOTTOM
    top: int = TOP


def hour_label(epoch_hour: int) -> str:
    return datetime.datetime.fromtimestamp(epoch_hour * 3600, tz=datetime.UTC).strftime("%H:00")


def bar_chart(series: Sequence[tuple[int, int, int]]) -> Chart:
    """`series`: (epoch hour, sent, failed), oldest first. Each hour gets a slot with two bars side by side;
    the scale's top is the largest count (at least 1, so an idle day draws flat, not divided by zero)."""
    peak = max([1, *(max(sent, failed) for _, sent, failed in series)])
    plot = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT) / max(1, len(series))
    bar_width = max(1.0, slot * 0.4)
    bars: list[Bar] = []
    labels: list[tuple[float, str]] = []
    for index, (hour, sent, failed) in enumerate(series):
        x = LEFT + index * slot + slot * 0.1
        for offset, count, kind in ((0.0, sent, "sent"), (bar_width, failed, "failed")):
            height = plot * count / peak
            bars.append(Bar(round(x + offset, 1), round(HEIGHT - BOTTOM - height, 1), round(bar_width, 1),
                            round(height, 1), kind, f"{hour_label(hour)} UTC: {count} {kind}"))  # fmt: skip
        if index % 4 == 0:
            labels.append((round(x, 1), hour_label(hour)))
    return Chart(tuple(bars), peak, tuple(labels))
