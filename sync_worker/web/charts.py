"""The dashboard's charts: the per-minute history (history.py) drawn as inline SVG.

Server-rendered, no script and no external file, so the page's Content-Security-Policy stays
`default-src 'none'`. A minute nothing was written for (a gauge nobody sampled) is a gap in the
line, not a zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlencode

from sync_worker.telemetry.history import History

REFRESH_SECONDS = 10
"""How often /admin reloads itself (a meta refresh)."""
CHART_RANGES = {60: "1 h", 360: "6 h", 1440: "24 h"}
"""Chart ranges offered, in minutes."""
DEFAULT_CHART_MINUTES = 60
WIDTH, HEIGHT = 560, 150
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 44, 8, 8, 20
COLOURS = ("#2e86c1", "#c0392b", "#d68910", "#1e8449", "#7d3c98", "#566573")


@dataclass(frozen=True)
class Chart:
    """One chart: its id, title, unit and the series it draws (history name -> legend)."""

    id: str
    title: str
    lines: dict[str, str]
    unit: str = ""


CHARTS = (
    Chart(
        "events",
        "Events per minute",
        {
            "events_accepted": "accepted",
            "events_refused": "refused",
            "events_duplicate": "duplicate",
            "events_stale": "stale",
        },
    ),
    Chart(
        "patches",
        "PATCHes per minute, by status",
        {
            "patches_2xx": "2xx",
            "patches_4xx": "4xx",
            "patches_429": "429",
            "patches_5xx": "5xx",
            "patches_error": "no answer",
        },
    ),
    Chart(
        "dead-letters",
        "Dead letters per minute, by reason",
        {
            "dead_letters_not_found": "not_found",
            "dead_letters_conflict": "conflict",
            "dead_letters_rejected": "rejected",
            "dead_letters_retries_exhausted": "retries_exhausted",
        },
    ),
    Chart("backlog", "Backlog (users)", {"due_now": "due now", "retrying": "retrying"}),
    Chart(
        "latency",
        "Sync latency, event to applied",
        {"latency_p50_seconds": "p50", "latency_p99_seconds": "p99"},
        unit="s",
    ),
    Chart(
        "breaker",
        "Breaker (0 closed, 1 half-open, 2 open) and pause",
        {
            "breaker": "breaker",
            "paused": "paused",
        },
    ),
)


def _number(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2g}"


def _segments(values: list[float | None], x_of: list[float], y_of: float) -> list[str]:
    """`points` attributes of the unbroken runs of a series (None breaks the line)."""
    runs: list[str] = []
    current: list[str] = []
    for x, value in zip(x_of, values, strict=True):
        if value is None:
            if current:
                runs.append(" ".join(current))
            current = []
            continue
        y = PAD_TOP + (HEIGHT - PAD_TOP - PAD_BOTTOM) * (1 - value / y_of)
        current.append(f"{x:.1f},{y:.1f}")
    if current:
        runs.append(" ".join(current))
    return runs


def chart_svg(chart: Chart, found: History) -> str:
    """One chart as a `<figure>` holding an inline SVG with a legend."""
    count = len(next(iter(found.series.values()), []))
    x_of = [
        PAD_LEFT + (WIDTH - PAD_LEFT - PAD_RIGHT) * (i / max(count - 1, 1)) for i in range(count)
    ]
    drawn = {name: found.series.get(name, [None] * count) for name in chart.lines}
    peak = max((v for values in drawn.values() for v in values if v is not None), default=0.0)
    top = peak if peak > 0 else 1.0
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {WIDTH} {HEIGHT}' "
        f"width='{WIDTH}' height='{HEIGHT}' role='img' aria-label='{escape(chart.title)}'>",
        f"<line x1='{PAD_LEFT}' y1='{HEIGHT - PAD_BOTTOM}' x2='{WIDTH - PAD_RIGHT}' "
        f"y2='{HEIGHT - PAD_BOTTOM}' stroke='#8888'/>",
        f"<line x1='{PAD_LEFT}' y1='{PAD_TOP}' x2='{PAD_LEFT}' y2='{HEIGHT - PAD_BOTTOM}' "
        "stroke='#8888'/>",
        f"<text x='{PAD_LEFT - 4}' y='{PAD_TOP + 9}' text-anchor='end' font-size='10' "
        f"fill='currentColor'>{escape(_number(top))}{escape(chart.unit)}</text>",
        f"<text x='{PAD_LEFT - 4}' y='{HEIGHT - PAD_BOTTOM}' text-anchor='end' font-size='10' "
        "fill='currentColor'>0</text>",
    ]
    if count:
        end = found.start + found.step_seconds * (count - 1)
        for x, moment, anchor in (
            (PAD_LEFT, found.start, "start"),
            (WIDTH - PAD_RIGHT, end, "end"),
        ):
            label = time.strftime("%H:%M", time.localtime(moment))
            parts.append(
                f"<text x='{x}' y='{HEIGHT - 5}' text-anchor='{anchor}' font-size='10' "
                f"fill='currentColor'>{label}</text>"
            )
    legend = []
    for (name, label), colour in zip(chart.lines.items(), COLOURS, strict=False):
        values = drawn[name]
        points = sum(v is not None for v in values)
        for run in _segments(values, x_of, top):
            parts.append(
                f"<polyline data-series='{escape(name)}' fill='none' stroke='{colour}' "
                f"stroke-width='1.5' points='{run}'/>"
            )
            if " " not in run:  # a lone point draws no line: mark it
                cx, cy = run.split(",")
                parts.append(f"<circle cx='{cx}' cy='{cy}' r='2.5' fill='{colour}'/>")
        latest = next((v for v in reversed(values) if v is not None), None)
        now = "-" if latest is None else _number(latest) + chart.unit
        legend.append(
            f"<span class='key' data-series='{escape(name)}' data-points='{points}'>"
            f"<span class='swatch' style='background:{colour}'></span>{escape(label)} "
            f"<b>{escape(now)}</b></span>"
        )
    parts.append("</svg>")
    return (
        f"<figure class='chart' id='chart-{chart.id}'><figcaption>{escape(chart.title)}"
        f"</figcaption>{''.join(parts)}<div class='legend'>{''.join(legend)}</div></figure>"
    )


def charts_html(found: History) -> str:
    """Every chart of the dashboard."""
    return "<div class='charts'>" + "".join(chart_svg(c, found) for c in CHARTS) + "</div>"


def history_section(found: History, query: dict[str, Any], refresh: bool) -> str:
    """The History section of /admin: range links (keeping the other filters), the refresh
    state with a link to pause or resume it, and the charts."""
    links = []
    for minutes, label in CHART_RANGES.items():
        css = "current" if minutes == query["minutes"] else ""
        target = urlencode({**query, "minutes": minutes})
        links.append(f"<a href='/admin?{escape(target)}' class='{css}'>{label}</a>")
    others = {k: v for k, v in query.items() if k != "refresh"}
    toggle = urlencode({**others, "refresh": "off"} if refresh else others)
    state = f"refreshed every {REFRESH_SECONDS} s" if refresh else "not refreshing"
    return (
        f"<h2>History</h2><nav id='history-range'>{' '.join(links)} <span class='muted'>"
        f"{state}</span> <a href='/admin?{escape(toggle)}' id='refresh-toggle'>"
        f"{'pause' if refresh else 'resume'}</a>"
        f"</nav>{charts_html(found)}"
    )
