"""The progress bar of one load level: which level of the sweep, how far along, and how long is left.

A run bounded by ``duration`` is a time bar (seconds elapsed of the duration, ticked twice a second, so
the time left is exact even while a slow request is still streaming); a run bounded only by ``requests``
counts requests and lets tqdm estimate the time left from the rate so far. Either way the label says
``[2/3]`` so a sweep's reader knows how many levels are still to come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .config import BenchConfig

TICK = 0.5  # seconds between redraws of a time bar


def level_label(kind: str, level: float, index: int, count: int) -> str:
    """``bench c=8 [2/3]`` or ``bench rate=2/s [1/2]``."""
    load = f"c={int(level)}" if kind == "concurrency" else f"rate={level:g}/s"
    return f"bench {load} [{index}/{count}]"


class LevelProgress:
    """Owns one tqdm bar; ``done()`` is called once per finished request, ``close()`` at the end."""

    def __init__(self, config: BenchConfig, label: str):
        from tqdm.auto import tqdm

        self.clock: Callable[[], float] = config.clock
        self.start = self.clock()
        self.completed = 0
        self.by_time = config.duration is not None
        self._ticker: asyncio.Task | None = None
        if self.by_time:
            self.duration = float(config.duration)
            self.bar = tqdm(total=self.duration, desc=label, unit="s", leave=False,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                                       "[{elapsed}<{remaining}{postfix}]")
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        else:
            self.bar = tqdm(total=config.requests, desc=label, unit="req", leave=False)

    async def _tick(self) -> None:
        while True:
            self._show_time()
            await asyncio.sleep(TICK)

    def _show_time(self) -> None:
        self.bar.n = min(self.clock() - self.start, self.duration)
        self.bar.set_postfix_str(f"{self.completed} req", refresh=False)
        self.bar.refresh()

    def done(self, record: object = None) -> None:
        self.completed += 1
        if self.by_time:
            self._show_time()
        else:
            self.bar.update(1)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self.bar.close()
