"""The analyzer's graphs, drawn with matplotlib instead of ``rrdtool graph``.

Same graphs as the original: manager status and report, and per child milter its status and
report, each for the last day, week, month (35 days) and year (420 days); the same series,
draw types, colours, labels and legend lines, and the same geometry: the plot area (rrdtool's
``--width 600 --height 200`` canvas) is exactly 600×200 pixels, white on rrdtool's grey
background, with the axes drawn just outside it. The image around it is
:data:`IMAGE_WIDTH` wide and :func:`image_height` high (the legend adds one line per series).

Values as in the original: each series is drawn from rows of ``pdp`` minutes (8/56/280/3360
per range, an RRD archive's resolution), the row value being the mean count per minute of the
row's written minutes; the legend's total is the exact number of events in the displayed range
(the original estimated it from the averages and counted the first row twice), avg the mean per
minute and max the largest per-minute count.

matplotlib is imported here only, and only when a graph is drawn (its Agg canvas directly,
no pyplot state), so that the other commands do not pay for it. It is optional (the extra
``milterman[graphs]``): :func:`require_graph_library` says what to install when it is missing.
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .log_analyzer_parse import MANAGER, REPORT, SESSION, STATUS
from .log_analyzer_store import Store, Summary

# geometry, in pixels (the plot area's top left corner counted from the image's top left)
PLOT_WIDTH = 600
PLOT_HEIGHT = 200
PLOT_LEFT = 67
PLOT_TOP = 30
IMAGE_WIDTH = PLOT_LEFT + PLOT_WIDTH + 30
LEGEND_TOP = PLOT_TOP + PLOT_HEIGHT + 26
LINE_HEIGHT = 14
DPI = 100

# rrdtool's default colours
BACK = "#f0f0f0"
CANVAS = "#ffffff"
SHADE_A = "#cfcfcf"
SHADE_B = "#9e9e9e"
GRID = "#b8b8b8"
MAJOR_GRID = "#de8080"
AXIS = "#101010"
ARROW = "#ff0000"
FONT = "#000000"


#: what to install for the graphs, one line for an administrator
GRAPHS_INSTALL_HINT = "pip install 'milterman[graphs]', or on Debian: apt install python3-matplotlib"


class GraphsUnavailable(RuntimeError):
    """matplotlib (or numpy under it) cannot be imported: no graph can be drawn, counting still works."""


def require_graph_library() -> None:
    """Import what :func:`render` needs before a run draws anything, so that a missing matplotlib is
    reported once, by name, with what to install (it is an optional extra: ``milterman[graphs]``)."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as error:
        raise GraphsUnavailable(f"{error}; to draw them: {GRAPHS_INSTALL_HINT}") from None


def image_height(legend_lines: int) -> int:
    """Height of a graph image with ``legend_lines`` legend lines (plus the last-update line)."""
    return LEGEND_TOP + LINE_HEIGHT * (legend_lines + 1) + 8


@dataclass(frozen=True)
class TimeRange:
    """One of the four ranges: ``--start -seconds``, end rounded to ``seconds × 3 / 600``
    (three pixels per row of the original), rows of ``pdp`` minutes."""

    tag: str
    label: str
    seconds: int
    pdp: int

    @property
    def end_step(self) -> int:
        """Multiple the graph's end is rounded to: one row of three pixels of the original."""
        return self.seconds * 3 // PLOT_WIDTH

    @property
    def row_width(self) -> int:
        """Seconds per drawn row (an RRD archive row of ``pdp`` minutes)."""
        return self.pdp * 60

    def window(self, now: float) -> tuple[int, int]:
        """``(start, end)`` of the graph drawn at ``now``: the end is ``now`` rounded *up* to a
        multiple of :attr:`end_step` (the original rounded down, which hid up to the last 2.1
        days from the year graph)."""
        end = -(-int(now) // self.end_step) * self.end_step
        return end - self.seconds, end


RANGES = (
    TimeRange("day", "Last Day", 86400, 8),
    TimeRange("week", "Last Week", 604800, 56),
    TimeRange("month", "Last Month", 3024000, 280),
    TimeRange("year", "Last Year", 36288000, 3360),
)


@dataclass(frozen=True)
class Entry:
    """One series of a graph: rrdtool draw type, family of its data, item, colour, legend label."""

    draw: str
    family: str
    item: str
    color: str
    label: str


STATUS_ENTRIES = tuple(Entry(draw, STATUS, item, color, label) for draw, item, color, label in (
    ("AREA", "pass", "#0000ff", "Pass"), ("STACK", "accept", "#00ff00", "Accept"),
    ("STACK", "reject", "#ff0000", "Reject"), ("STACK", "discard", "#ffd400", "Discard"),
    ("STACK", "temporary-failure", "#888888", "Temp-Fail"), ("STACK", "quarantine", "#a52a2a", "Quarantine"),
    ("STACK", "abort", "#ff9999", "Abort"), ("STACK", "error", "#ff00ff", "Error")))
STOP_ENTRY = Entry("STACK", STATUS, "stop", "#99ffff", "Stop")
SESSION_LINES = tuple(Entry("LINE2", SESSION, item, color, label) for item, color, label in (
    ("smtp", "#000000", "SMTP"), ("disconnected", "#999999", "Disconnected"),
    ("concurrent", "#9999ff", "Concurrent")))
REPORT_ENTRIES = tuple(Entry(draw, REPORT, item, color, label) for draw, item, color, label in (
    ("AREA", "spam", "#ff0000", "spam"), ("STACK", "virus", "#ddbb00", "Virus"),
    ("STACK", "uribl", "#dd00bb", "URIBL"), ("STACK", "greylisting-pass", "#888888", "Greylisting (pass)"),
    ("STACK", "tarpitting-pass", "#000088", "Tarpitting (pass)"), ("STACK", "spf-pass", "#33cc33", "SPF (pass)"),
    ("STACK", "spf-fail", "#cc3333", "SPF (fail)"), ("STACK", "sender-id-pass", "#33cccc", "Sender ID (pass)"),
    ("STACK", "sender-id-fail", "#cccc33", "Sender ID (fail)"), ("STACK", "dkim-pass", "#3366cc", "DKIM (pass)"),
    ("STACK", "dkim-fail", "#cc6633", "DKIM (fail)"), ("STACK", "dkim-adsp-pass", "#3399cc", "DKIM ADSP (pass)"),
    ("STACK", "dkim-adsp-fail", "#cc9933", "DKIM ADSP (fail)")))


def file_part(name: str) -> str:
    """A milter name as it appears in file names: unchanged unless it holds characters that do
    not belong in a file name (``/``, controls, spaces…), which are %-escaped."""
    return urllib.parse.quote(name, safe="@+=,")


@dataclass(frozen=True)
class Graph:
    """One graph: file stem, title, the series it draws from and its entries."""

    stem: str
    title: str
    family: str
    name: str
    unit: str
    entries: tuple[Entry, ...]

    def file_name(self, time_range: TimeRange) -> str:
        """``STEM.RANGE.png``, the original's file names."""
        return f"{self.stem}.{time_range.tag}.png"

    @property
    def vertical_label(self) -> str:
        """``sessions/min`` or ``mails/min``."""
        return f"{self.unit}/min"


def manager_status_graph() -> Graph:
    """"milter manager: status": sessions by status, stacked, with the session lines."""
    return Graph("milter-manager.status", "milter manager: status", STATUS, MANAGER, "sessions",
                 STATUS_ENTRIES + SESSION_LINES)


def manager_report_graph() -> Graph:
    """"milter manager: report": report keys of every child's headers, stacked."""
    return Graph("milter-manager.report", "milter manager: report", REPORT, MANAGER, "mails", REPORT_ENTRIES)


def milter_status_graph(name: str) -> Graph:
    """"milter: status: NAME": that child's ends by status (with stop) and the session lines."""
    return Graph(f"milter.status.{file_part(name)}", f"milter: status: {name}", STATUS, name, "sessions",
                 STATUS_ENTRIES + (STOP_ENTRY,) + SESSION_LINES)


def milter_report_graph(name: str) -> Graph:
    """"milter: report: NAME": report keys of the headers that child added."""
    return Graph(f"milter.report.{file_part(name)}", f"milter: report: {name}", REPORT, name, "mails",
                 REPORT_ENTRIES)


def graphs_of(store: Store) -> list[Graph]:
    """The graphs to draw, in the order of the manual: manager status, manager report, then
    per child milter (first seen first) its status and report — each only when its series has
    been written (a graph without data is skipped). Milters come from the
    database, so ``--no-update-db`` and runs over logs without them still draw them."""
    existing = store.series()
    candidates = [manager_status_graph(), manager_report_graph()]
    for name in store.milters():
        candidates += [milter_status_graph(name), milter_report_graph(name)]
    return [graph for graph in candidates if (graph.family, graph.name) in existing]


# ------------------------------------------------------------------------------------- time axis

def _local(stamp: float, zone: datetime.tzinfo | None) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(stamp, zone)


def _offset(stamp: float, zone: datetime.tzinfo | None) -> int:
    """Seconds east of UTC of the local time at ``stamp``."""
    moment = _local(stamp, zone)
    if moment.tzinfo is None:
        moment = moment.astimezone()
    offset = moment.utcoffset()
    return int(offset.total_seconds()) if offset else 0


def _every(start: int, end: int, step: int, offset: int, phase: int = 0) -> list[int]:
    """Times in ``(start, end)`` at local multiples of ``step`` (shifted by ``phase``)."""
    first = start + (-(start + offset - phase)) % step
    return list(range(first, end, step))


def _months(start: int, end: int, zone: datetime.tzinfo | None) -> list[int]:
    moment = _local(start, zone)
    year, month = moment.year, moment.month
    result = []
    while True:
        month += 1
        if month > 12:
            year, month = year + 1, 1
        first = datetime.datetime(year, month, 1)
        stamp = int(time.mktime(first.timetuple()) if zone is None else first.replace(tzinfo=zone).timestamp())
        if stamp >= end:
            return result
        if stamp > start:
            result.append(stamp)


def time_ticks(time_range: TimeRange, start: int, end: int,
               zone: datetime.tzinfo | None) -> tuple[list[int], list[int], str]:
    """Minor grid, major grid (labelled) and the label format of a range, in local time."""
    offset = _offset(end, zone)
    hour, day = 3600, 86400
    if time_range.tag == "day":
        return _every(start, end, hour, offset), _every(start, end, 4 * hour, offset), "%H:%M"
    if time_range.tag == "week":
        return _every(start, end, 6 * hour, offset), _every(start, end, day, offset), "%a %d"
    if time_range.tag == "month":
        # weeks start on Monday; the epoch was a Thursday
        return _every(start, end, day, offset), _every(start, end, 7 * day, offset, 4 * day), "Week %V"
    months = _months(start, end, zone)
    return months, months, "%b"


def value_ticks(maximum: float) -> tuple[float, list[float]]:
    """Top of the value axis and its grid (about five lines of 1/2/5 × 10ⁿ, as --alt-y-grid)."""
    if not maximum or math.isnan(maximum) or maximum <= 0:
        maximum = 1.0
    raw = maximum / 5
    power = 10 ** math.floor(math.log10(raw))
    step = next(factor * power for factor in (1, 2, 5, 10) if factor * power >= raw)
    top = math.ceil(maximum / step - 1e-9) * step
    count = int(round(top / step))
    return top, [index * step for index in range(count + 1)]


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


# ------------------------------------------------------------------------------------- drawing

def legend_line(entry: Entry, width: int, unit: str, summary: Summary) -> str:
    """``LABEL  total: %8.0lf UNIT  avg: %6.2lf UNIT/min  max: %4.0lf UNIT/min``."""
    return (f"{entry.label.ljust(width)}  total: {summary.total:8.0f} {unit}  "
            f"avg: {summary.average:6.2f} {unit}/min  max: {summary.maximum:4.0f} {unit}/min")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def render(store: Store, graph: Graph, time_range: TimeRange, now: float, directory: Path,
           zone: datetime.tzinfo | None = None) -> Path:
    """Draw one graph into ``directory`` (written to a temporary file, then renamed, so a browser
    never loads half an image); returns its path."""
    import numpy
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon, Rectangle

    start, end = time_range.window(now)
    width = time_range.row_width
    first_row = start - start % width
    rows = list(range(first_row, end, width))
    edges = numpy.array(rows + [rows[-1] + width], dtype=float)

    stacked = [entry for entry in graph.entries if entry.draw in ("AREA", "STACK")]
    lines = [entry for entry in graph.entries if entry.draw.startswith("LINE")]
    main = store.consolidate(graph.family, graph.name, [entry.item for entry in stacked], start, end, width)
    session = store.consolidate(SESSION, MANAGER, [entry.item for entry in lines], start, end, width)
    summaries = store.summarize(graph.family, graph.name, [entry.item for entry in stacked], start, end)
    summaries.update(store.summarize(SESSION, MANAGER, [entry.item for entry in lines], start, end))

    def averages(data: dict[int, tuple[float, float]]):
        return numpy.array([data[row][0] if row in data else numpy.nan for row in rows], dtype=float)

    legend_count = len(graph.entries)
    height = image_height(legend_count)
    figure = Figure(figsize=(IMAGE_WIDTH / DPI, height / DPI), dpi=DPI, facecolor=BACK)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((PLOT_LEFT / IMAGE_WIDTH, 1 - (PLOT_TOP + PLOT_HEIGHT) / height,
                            PLOT_WIDTH / IMAGE_WIDTH, PLOT_HEIGHT / height), facecolor=CANVAS)
    for spine in axes.spines.values():
        spine.set_visible(False)

    base = numpy.zeros(len(rows))
    highest = 0.0
    layers = []
    for entry in stacked:
        top = base + averages(main[entry.item])
        layers.append((entry, base, top))
        base = top
    if len(rows) and not numpy.all(numpy.isnan(base)):
        highest = float(numpy.nanmax(base))
    line_values = []
    for entry in lines:
        values = averages(session[entry.item])
        line_values.append((entry, values))
        if not numpy.all(numpy.isnan(values)):
            highest = max(highest, float(numpy.nanmax(values)))
    top_value, value_grid = value_ticks(highest)

    axes.set_xlim(start, end)
    axes.set_ylim(0, top_value)
    minor, major, label_format = time_ticks(time_range, start, end, zone)
    for stamp in minor:
        if stamp not in major:
            axes.axvline(stamp, color=GRID, linewidth=0.6, linestyle=(0, (1, 2)), zorder=1)
    for stamp in major:
        axes.axvline(stamp, color=MAJOR_GRID, linewidth=0.6, linestyle=(0, (1, 2)), zorder=1)
    for value in value_grid[1:-1]:
        axes.axhline(value, color=MAJOR_GRID, linewidth=0.6, linestyle=(0, (1, 2)), zorder=1)
    axes.set_xticks(major, [_local(stamp, zone).strftime(label_format) for stamp in major])
    axes.set_yticks(value_grid, [_number(value) for value in value_grid])
    axes.tick_params(length=0, labelsize=7, colors=FONT, pad=4)

    for entry, bottom, top in layers:
        axes.stairs(top, edges, baseline=bottom, fill=True, color=entry.color, linewidth=0, zorder=2)
    for entry, values in line_values:
        axes.stairs(values, edges, baseline=None, color=entry.color, linewidth=2, zorder=3)

    def pixel_box(left: float, top: float, box_width: float, box_height: float, color: str, **kwargs) -> None:
        figure.add_artist(Rectangle((left, height - top - box_height), box_width, box_height, transform=None,
                                    facecolor=color, antialiased=False, linewidth=0, **kwargs))

    # rrdtool's frame shading and the axes just outside the plot area, with red arrows
    pixel_box(0, 0, IMAGE_WIDTH, 2, SHADE_A)
    pixel_box(0, 0, 2, height, SHADE_A)
    pixel_box(0, height - 2, IMAGE_WIDTH, 2, SHADE_B)
    pixel_box(IMAGE_WIDTH - 2, 0, 2, height, SHADE_B)
    pixel_box(PLOT_LEFT - 1, PLOT_TOP - 4, 1, PLOT_HEIGHT + 5, AXIS)
    pixel_box(PLOT_LEFT - 4, PLOT_TOP + PLOT_HEIGHT, PLOT_WIDTH + 8, 1, AXIS)
    x_arrow = PLOT_LEFT + PLOT_WIDTH + 4
    y_axis = height - PLOT_TOP - PLOT_HEIGHT - 0.5
    figure.add_artist(Polygon([(x_arrow, y_axis - 3), (x_arrow + 6, y_axis), (x_arrow, y_axis + 3)],
                              closed=True, transform=None, facecolor=ARROW, edgecolor=ARROW, linewidth=0))
    y_arrow = height - PLOT_TOP + 4
    figure.add_artist(Polygon([(PLOT_LEFT - 3.5, y_arrow), (PLOT_LEFT - 0.5, y_arrow + 6),
                               (PLOT_LEFT + 2.5, y_arrow)], closed=True, transform=None,
                              facecolor=ARROW, edgecolor=ARROW, linewidth=0))

    def text(x: float, top: float, content: str, **kwargs) -> None:
        figure.text(x / IMAGE_WIDTH, 1 - top / height, content, color=FONT, **kwargs)

    text(IMAGE_WIDTH / 2, 16, graph.title, ha="center", va="baseline", fontsize=9.5, family="DejaVu Sans")
    text(14, PLOT_TOP + PLOT_HEIGHT / 2, graph.vertical_label, ha="center", va="center", rotation=90,
         fontsize=7.5, family="DejaVu Sans")
    label_width = max(len(entry.label) for entry in graph.entries)
    for index, entry in enumerate(graph.entries):
        top = LEGEND_TOP + index * LINE_HEIGHT
        pixel_box(12, top + 2, 9, 9, AXIS)
        pixel_box(13, top + 3, 7, 7, entry.color)
        text(26, top + 10, legend_line(entry, label_width, graph.unit, summaries[entry.item]),
             ha="left", va="baseline", fontsize=7.5, family="DejaVu Sans Mono")
    last = store.last_update(graph.family, graph.name)
    if last is not None:
        stamp = _local(last, zone)
        if stamp.tzinfo is None:
            stamp = stamp.astimezone()
        text(IMAGE_WIDTH - 10, LEGEND_TOP + legend_count * LINE_HEIGHT + 10, f"[{stamp.isoformat()}]",
             ha="right", va="baseline", fontsize=7.5, family="DejaVu Sans Mono")

    directory = Path(directory)
    target = directory / graph.file_name(time_range)
    handle, temporary = tempfile.mkstemp(prefix=".", suffix=".png", dir=directory)
    try:
        with os.fdopen(handle, "wb") as output:
            figure.savefig(output, format="png", dpi=DPI, facecolor=BACK,
                           metadata={"Title": graph.title, "Software": "milterman milter-manager-log-analyzer"})
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return target
