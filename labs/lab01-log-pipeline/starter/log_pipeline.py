"""Lab 1: a lazy log pipeline. Fill in each function; run `corolab lab check 1` to see your score."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator


def read_lines(path: str) -> Iterator[str]:
    """Yield the lines of the file at ``path`` one at a time, without the trailing newline.

    The file must be closed when the consumer stops early (when the generator is closed).
    """
    raise NotImplementedError


def follow(path: str, poll: Callable[[], None], max_idle_polls: int = 3) -> Iterator[str]:
    """Yield complete lines appended to ``path`` after the call starts (like ``tail -f``).

    - Start at the current end of the file: lines already there are skipped.
    - A line may be written in pieces: yield it once, whole, when its newline arrives.
    - When there is nothing new, call ``poll()``; stop after ``max_idle_polls`` empty polls in a row.
    - Close the file when done or when the consumer stops early.
    """
    raise NotImplementedError


def grep(pattern: str, lines: Iterable[str]) -> Iterator[str]:
    """Lazily yield the lines in which the regular expression ``pattern`` matches (anywhere)."""
    raise NotImplementedError


LINE = re.compile(
    r'(?P<host>\S+) \S+ \S+ \[[^\]]+\] "(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) (?P<bytes>\S+)'
)


def parse(lines: Iterable[str]) -> Iterator[dict]:
    """Lazily turn combined-format log lines into dicts.

    Keys: ``host`` (str), ``method`` (str), ``path`` (str), ``status`` (int), ``bytes`` (int; ``-`` means 0).
    Lines that do not match ``LINE`` are skipped.
    """
    raise NotImplementedError


def top_paths(records: Iterable[dict], n: int = 3) -> list[tuple[str, int]]:
    """The ``n`` most frequent paths as ``(path, count)``, most frequent first; ties by path, A to Z."""
    raise NotImplementedError


def first_errors(path: str, k: int) -> list[dict]:
    """The first ``k`` parsed records with ``status >= 500``, reading only as much of the file as needed."""
    raise NotImplementedError
