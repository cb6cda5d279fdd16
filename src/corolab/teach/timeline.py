"""Record who ran when, and draw it: tasks as rows, time across, one colour per state.

Interleaving is easier to see than to read. Chapters record spans while their code runs (a generator
task's turn, a coroutine waiting on a timer, a thread blocked in ``time.sleep``) and plot them, so every
figure comes from the cell's own run. The same record answers the questions a cell asserts: did these
two rows overlap, how many rows were running at once.

>>> tl = Timeline()
>>> with tl.span("a"):
...     pass
>>> tl.rows
['a']
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

#: The states a span may have, and their colours: running is solid, waiting is pale, blocked is red.
STATES: dict[str, str] = {"running": "#1f77b4", "waiting": "#c6dbef", "blocked": "#d62728", "idle": "#eeeeee"}


@dataclass(frozen=True)
class Span:
    """One stretch of time on one row, in seconds since the timeline started."""

    row: str
    start: float
    end: float
    state: str = "running"

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Mark:
    """A point in time on one row, with a short label (a request arriving, a token sent)."""

    row: str
    at: float
    label: str = ""


class Timeline:
    """Spans and marks measured on one clock. Thread-safe enough for appends from several threads:
    ``list.append`` is atomic in CPython, and nothing else mutates the lists."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.t0 = clock()
        self.spans: list[Span] = []
        self.marks: list[Mark] = []
        self._order: dict[str, None] = {}  # rows in the order they first appeared (a span's start counts)

    def now(self) -> float:
        """Seconds since the timeline started."""
        return self.clock() - self.t0

    def add(self, row: str, start: float, end: float, state: str = "running") -> Span:
        """Record a span whose times you measured yourself (with :meth:`now`)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; use one of {', '.join(STATES)}")
        if end < start:
            raise ValueError(f"a span cannot end ({end}) before it starts ({start})")
        span = Span(row, start, end, state)
        self._order.setdefault(row, None)
        self.spans.append(span)
        return span

    @contextlib.contextmanager
    def span(self, row: str, state: str = "running") -> Iterator[None]:
        """Record the time spent inside the ``with`` block as one span of ``row``."""
        self._order.setdefault(row, None)
        start = self.now()
        try:
            yield
        finally:
            self.add(row, start, self.now(), state)

    def mark(self, row: str, label: str = "") -> Mark:
        mark = Mark(row, self.now(), label)
        self._order.setdefault(row, None)
        self.marks.append(mark)
        return mark

    @property
    def rows(self) -> list[str]:
        """Row names in the order they first appeared (a ``with span`` counts from its start)."""
        return list(self._order)

    def of(self, row: str, state: str | None = None) -> list[Span]:
        return [s for s in self.spans if s.row == row and (state is None or s.state == state)]

    def overlaps(self, row_a: str, row_b: str, state: str = "running") -> bool:
        """Whether some span of ``row_a`` and some span of ``row_b`` (in ``state``) share an instant."""
        return any(a.start < b.end and b.start < a.end for a in self.of(row_a, state) for b in self.of(row_b, state))

    def max_concurrent(self, state: str = "running") -> int:
        """The largest number of spans in ``state`` open at one instant (a sweep over start/end events)."""
        events = sorted((t, delta) for s in self.spans if s.state == state for t, delta in ((s.start, 1), (s.end, -1)))
        best = current = 0
        for _, delta in events:  # at equal times ends (-1) sort before starts (+1): touching is not overlap
            current += delta
            best = max(best, current)
        return best

    def busy(self, row: str, state: str = "running") -> float:
        """Total seconds ``row`` spent in ``state``."""
        return sum(s.duration for s in self.of(row, state))

    def plot(self, ax: Any = None, title: str | None = None, unit: str = "ms") -> Any:
        """Draw the timeline with matplotlib and return the figure. ``unit`` is "s" or "ms"."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        scale = 1000.0 if unit == "ms" else 1.0
        rows = self.rows
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
        index = {row: i for i, row in enumerate(rows)}
        for state, colour in STATES.items():
            for s in self.spans:
                if s.state == state:
                    ax.broken_barh([(s.start * scale, max(s.duration * scale, 1e-9))], (index[s.row] - 0.35, 0.7),
                                   facecolors=colour, edgecolors="black", linewidth=0.3)
        for m in self.marks:
            ax.plot([m.at * scale], [index[m.row]], marker="|", color="black", markersize=12)
            if m.label:
                ax.annotate(m.label, (m.at * scale, index[m.row] + 0.38), fontsize=7, ha="center")
        ax.set_yticks(range(len(rows)), rows)
        ax.invert_yaxis()
        ax.set_xlabel(f"time ({unit})")
        used = [state for state in STATES if any(s.state == state for s in self.spans)]
        if used:
            # Right of the axes, not below: below, it collides with the x label whatever the height.
            ax.legend(handles=[Patch(facecolor=STATES[s], edgecolor="black", label=s) for s in used],
                      loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
        if title:
            ax.set_title(title)
        fig = ax.figure
        fig.tight_layout()
        return fig


__all__ = ["Mark", "STATES", "Span", "Timeline"]
