"""Lab 9: load-test metrics from recorded streams. Run `corolab lab check 9` to see your score.

The definitions are vLLM's serving benchmark's, and corolab.bench's: the tests compare your numbers with
the package's on streams recorded from its fake server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Stream:
    """One streamed request as the client recorded it: raw clock readings, in seconds. (Given: keep it.)"""

    sent: float                                        # when the client sent the request
    chunks: list[float] = field(default_factory=list)  # when each content-carrying chunk arrived
    end: float | None = None                           # when the last byte arrived; None: the request failed
    tokens: int = 0                                    # output tokens, as the server's usage counted them
    due: float | None = None                           # open loop: when the schedule meant to send it

    @property
    def ok(self) -> bool:
        return self.end is not None


def ttft(s: Stream, *, from_schedule: bool = False) -> float | None:
    """Time to first token: sent → first content chunk; None if no content arrived.

    With ``from_schedule=True`` measure from ``s.due`` instead (from ``s.sent`` when ``due`` is None).
    """
    raise NotImplementedError("ttft() is not written yet")


def e2el(s: Stream, *, from_schedule: bool = False) -> float | None:
    """End-to-end latency: sent (or due, as in ttft) → last byte; None if the request failed."""
    raise NotImplementedError("e2el() is not written yet")


def tpot(s: Stream) -> float | None:
    """Time per output token after the first: (E2EL − TTFT) / (tokens − 1); None below two tokens."""
    raise NotImplementedError("tpot() is not written yet")


def itl(s: Stream) -> list[float]:
    """Inter-token latencies: every gap between two successive content chunks of this stream."""
    raise NotImplementedError("itl() is not written yet")


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile, interpolating linearly between closest ranks (numpy's default); NaN if empty."""
    raise NotImplementedError("percentile() is not written yet")


def goodput(streams: Sequence[Stream], ttft_limit: float | None, tpot_limit: float | None, *,
            from_schedule: bool = False) -> float:
    """Requests per second of the window that finished and met both limits (a limit of None is no limit).

    A reply with fewer than two tokens has no TPOT and is judged on TTFT alone. The window runs from the
    first request sent (failed ones too) to the last reply finished. NaN if the window is empty.
    With ``from_schedule=True`` the TTFT limit is checked against TTFT measured from ``due``, and the
    window starts at the earliest ``due`` (``sent`` for a stream whose ``due`` is None).
    """
    raise NotImplementedError("goodput() is not written yet")


def summary(streams: Sequence[Stream], *, ttft_limit: float | None = None, tpot_limit: float | None = None,
            from_schedule: bool = False) -> dict:
    """What a load test reports, over the requests that finished.

    Keys: ``completed``, ``failed``, ``duration`` (the window), ``output_throughput`` (tokens of finished
    requests per second of the window), ``goodput`` (None when no limit is given), and ``ttft``, ``tpot``,
    ``itl``, ``e2el``: each a dict with ``mean``, ``median``, ``p90``, ``p99``. ITL pools the gaps of every
    request. ``from_schedule`` is passed on to ttft, e2el and goodput, and starts the window (so also
    ``duration`` and ``output_throughput``) at the earliest ``due`` instead of the earliest ``sent``.
    """
    raise NotImplementedError("summary() is not written yet")
