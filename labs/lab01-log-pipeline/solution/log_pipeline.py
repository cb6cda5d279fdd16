"""Lab 1 instructor solution: a lazy log pipeline."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import islice


def read_lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def follow(path: str, poll: Callable[[], None], max_idle_polls: int = 3) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        f.seek(0, 2)
        partial, idle = "", 0
        while idle < max_idle_polls:
            chunk = f.readline()
            if not chunk:
                idle += 1
                poll()
                continue
            idle = 0
            partial += chunk
            if partial.endswith("\n"):
                yield partial[:-1]
                partial = ""


def grep(pattern: str, lines: Iterable[str]) -> Iterator[str]:
    rx = re.compile(pattern)
    return (line for line in lines if rx.search(line))


LINE = re.compile(
    r'(?P<host>\S+) \S+ \S+ \[[^\]]+\] "(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) (?P<bytes>\S+)'
)


def parse(lines: Iterable[str]) -> Iterator[dict]:
    for line in lines:
        m = LINE.match(line)
        if m is None:
            continue
        record = m.groupdict()
        record["status"] = int(record["status"])
        record["bytes"] = 0 if record["bytes"] == "-" else int(record["bytes"])
        yield record


def top_paths(records: Iterable[dict], n: int = 3) -> list[tuple[str, int]]:
    counts = Counter(r["path"] for r in records)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def first_errors(path: str, k: int) -> list[dict]:
    return list(islice((r for r in parse(read_lines(path)) if r["status"] >= 500), k))
