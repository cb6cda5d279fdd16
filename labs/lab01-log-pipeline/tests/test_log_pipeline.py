"""Graded tests for Lab 1. Laziness is proved by counting the lines your code pulls, cleanup by
checking that the files it opened are closed."""

from __future__ import annotations

import builtins
import io
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest

from corolab.labs.grading import points
from corolab.sample_logs import make_access_log_lines, write_access_log


class CountingFile:
    """A text file that counts the lines read from it."""

    def __init__(self, f):
        self._f = f
        self.lines_read = 0

    def __iter__(self):
        return self

    def __next__(self):
        line = next(self._f)
        self.lines_read += 1
        return line

    def readline(self, *args):
        line = self._f.readline(*args)
        self.lines_read += bool(line)
        return line

    def readlines(self, *args):
        lines = self._f.readlines(*args)
        self.lines_read += len(lines)
        return lines

    def read(self, *args):
        text = self._f.read(*args)
        self.lines_read += text.count("\n")
        return text

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.fixture
def opened(monkeypatch):
    """Every text file the student's code opens for reading, wrapped to count lines."""
    files: list[CountingFile] = []
    real_open = io.open

    def tracking_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "bwax+"):
            return f
        wrapped = CountingFile(f)
        files.append(wrapped)
        return wrapped

    monkeypatch.setattr(builtins, "open", tracking_open)
    monkeypatch.setattr(io, "open", tracking_open)
    return files


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return write_access_log(tmp_path / "access.log", n=5_000, seed=11)


def appender(path: Path, chunks: list[str]):
    """A poll() that writes the next chunk to the file each time it is called."""
    pending = list(chunks)

    def poll() -> None:
        if pending:
            with open(path, "a", encoding="utf-8") as f:
                f.write(pending.pop(0))

    return poll


@points(2, hint="Yield each line of the file without its trailing newline, in order.")
def test_read_lines_yields_lines(student, log: Path) -> None:
    lines = list(student.read_lines(str(log)))
    assert lines == make_access_log_lines(5_000, seed=11)


@points(2, hint="Open the file with `with` inside the generator, so close() on the generator closes it.")
def test_read_lines_closes_file_when_stopped_early(student, log: Path, opened) -> None:
    gen = student.read_lines(str(log))
    next(gen)
    assert opened and not opened[-1].closed, "the file should still be open while the generator is paused"
    gen.close()
    assert all(f.closed for f in opened), "closing the generator must close the file"


@points(2, hint="Start at the end of the file (f.seek(0, 2)) and yield each line appended later.",
        params="a file holding 2 old lines, 3 lines appended one per poll, max_idle_polls=2")
def test_follow_yields_appended_lines(student, tmp_path: Path) -> None:
    path = tmp_path / "live.log"
    path.write_text("old 1\nold 2\n")
    got = list(student.follow(str(path), appender(path, ["new 1\n", "new 2\n", "new 3\n"]), max_idle_polls=2))
    assert got == ["new 1", "new 2", "new 3"]


@points(2, hint="Keep the piece read so far until its newline arrives; yield the whole line once.",
        params="one line written in 3 pieces over 3 polls, max_idle_polls=2")
def test_follow_joins_lines_written_in_pieces(student, tmp_path: Path) -> None:
    path = tmp_path / "live.log"
    path.write_text("")
    got = list(student.follow(str(path), appender(path, ["GET /ab", "out HTTP", "/1.1\nnext\n"]), max_idle_polls=2))
    assert got == ["GET /about HTTP/1.1", "next"]


@points(1, hint="Count empty polls in a row; reset the count when a line arrives; stop at max_idle_polls.",
        params="polls write 'a', nothing, 'b'; max_idle_polls=3, so 6 polls in all")
def test_follow_stops_after_idle_polls(student, tmp_path: Path) -> None:
    path = tmp_path / "live.log"
    path.write_text("")
    calls = []
    poll = appender(path, ["a\n", "", "b\n"])

    def counting_poll() -> None:
        calls.append(1)
        poll()

    got = list(student.follow(str(path), counting_poll, max_idle_polls=3))
    assert got == ["a", "b"]
    # polls: 1 (writes a), then 2 (writes nothing) and 3 (writes b), then 3 more empty polls
    assert len(calls) == 6


@points(1, hint="Use `with open(...)` inside follow as well.", params="closed after the first line, max_idle_polls=5")
def test_follow_closes_file(student, tmp_path: Path, opened) -> None:
    path = tmp_path / "live.log"
    path.write_text("")
    gen = student.follow(str(path), appender(path, ["x\n", "y\n"]), max_idle_polls=5)
    assert next(gen) == "x"
    gen.close()
    assert opened and all(f.closed for f in opened)


@points(1, hint="Use re.compile(pattern).search(line): the pattern is a regular expression, not a plain string.")
def test_grep_filters_with_a_regex(student) -> None:
    lines = ['a "GET / HTTP/1.1" 500 1', 'b "GET / HTTP/1.1" 200 1', 'c "GET / HTTP/1.1" 503 1', "5xx"]
    assert list(student.grep(r'" 5\d\d ', lines)) == [lines[0], lines[2]]


@points(2, hint="grep must be a generator (or return a generator expression), not build a list.")
def test_grep_is_lazy(student) -> None:
    pulled = Counter()

    def source():
        for line in make_access_log_lines(1_000, seed=2):
            pulled["n"] += 1
            yield line

    matches = student.grep(r"GET", source())
    assert pulled["n"] == 0, "grep read input before anyone asked for a result"
    first = next(iter(matches))
    assert "GET" in first
    assert pulled["n"] < 10


@points(2, hint="status and bytes are ints; a '-' size means 0. Use the LINE regex's named groups.")
def test_parse_fields(student) -> None:
    lines = [
        '10.0.0.1 - - [14/Mar/2026:09:26:54 +0000] "GET /about HTTP/1.1" 200 512 "-" "curl/8.5.0"',
        '10.0.0.2 - - [14/Mar/2026:09:26:55 +0000] "HEAD / HTTP/1.1" 304 - "-" "curl/8.5.0"',
    ]
    assert list(student.parse(lines)) == [
        {"host": "10.0.0.1", "method": "GET", "path": "/about", "status": 200, "bytes": 512},
        {"host": "10.0.0.2", "method": "HEAD", "path": "/", "status": 304, "bytes": 0},
    ]


@points(1, hint="Skip lines that LINE.match() does not match instead of raising.")
def test_parse_skips_malformed_lines(student) -> None:
    good = make_access_log_lines(3, seed=5)
    records = list(student.parse(["garbage", good[0], "", good[1], "GET / 200", good[2]]))
    assert len(records) == 3


@points(1, hint="parse must be a generator too.")
def test_parse_is_lazy(student) -> None:
    pulled = Counter()

    def source():
        for line in make_access_log_lines(1_000, seed=3):
            pulled["n"] += 1
            yield line

    records = student.parse(source())
    assert pulled["n"] == 0
    next(iter(records))
    assert pulled["n"] == 1


@points(2, hint="Count with collections.Counter; sort by count (high first), then by path.")
def test_top_paths(student) -> None:
    records = [{"path": p} for p in ["/b", "/a", "/b", "/d", "/a", "/c", "/b"]]
    assert student.top_paths(iter(records), n=3) == [("/b", 3), ("/a", 2), ("/c", 1)]
    expected = Counter(r["path"] for r in records).most_common()
    assert student.top_paths(records, n=10) == sorted(expected, key=lambda kv: (-kv[1], kv[0]))


@points(2, hint="Chain read_lines → parse → a filter, then take k with itertools.islice; never build a full list.")
def test_first_errors_reads_only_what_it_needs(student, log: Path, opened) -> None:
    lines = make_access_log_lines(5_000, seed=11)
    errors = [r for r in student.parse(lines) if r["status"] >= 500]
    opened.clear()
    got = student.first_errors(str(log), 3)
    assert got == errors[:3]
    needed = next(i for i, line in enumerate(lines, start=1) if line == _raw(lines, errors[2]))
    read = sum(f.lines_read for f in opened)
    assert read <= needed + 1, f"read {read} lines; {needed} were enough"
    assert all(f.closed for f in opened), "the file should be closed when first_errors returns"


def _raw(lines: list[str], record: dict) -> str:
    """The raw line a record came from (records are unique enough in the seeded log)."""
    for line in lines:
        if record["host"] in line and f'{record["path"]} ' in line and f'" {record["status"]} ' in line:
            return line
    raise AssertionError("record not found")
