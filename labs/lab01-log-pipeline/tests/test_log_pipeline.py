"""Graded tests for Lab 1. Laziness is proved by counting the lines your code pulls, cleanup by
checking that the files it opened are closed.

Every test draws its inputs (log lines, words, counts) from ``rng``, which the grader seeds afresh for each
grading run, and ``observe()``s what your code computed from them; the grader compares that with what the
reference solution computes from the same inputs."""

from __future__ import annotations

import builtins
import io
import random
import re
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest

from corolab.labs.grading import points
from corolab.labs.seeded import words
from corolab.teach.sample_logs import PATHS, make_access_log_lines, write_access_log


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


# -- helpers: seeded inputs, and the tests' own reading of a log line ----------------------------------

def seeded_lines(rng: random.Random, n: int) -> list[str]:
    """``n`` realistic access-log lines from a seed drawn from ``rng``."""
    return make_access_log_lines(n, seed=rng.randrange(1_000_000))


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def record(line: str) -> dict:
    """What parse() should make of one well-formed line (the tests' own reading, without LINE)."""
    _, request, answer, *_ = line.split('"')
    method, path, _ = request.split()
    status, size = answer.split()
    return {"host": line.split()[0], "method": method, "path": path, "status": int(status),
            "bytes": 0 if size == "-" else int(size)}


def appender(path: Path, chunks: list[str]):
    """A poll() that writes the next chunk to the file each time it is called."""
    pending = list(chunks)

    def poll() -> None:
        if pending:
            with open(path, "a", encoding="utf-8") as f:
                f.write(pending.pop(0))

    return poll


def first_difference(got: list, expected: list, what: str = "line") -> str:
    """A short message: where ``got`` first parts from ``expected``."""
    for i, (mine, theirs) in enumerate(zip(got, expected), start=1):
        if mine != theirs:
            return f"{what} {i}: expected {theirs!r}, got {mine!r}"
    return f"expected {len(expected)} {what}s, got {len(got)}"


def still_open(opened: list[CountingFile]) -> str:
    return f"{sum(not f.closed for f in opened)} of the {len(opened)} files it opened are still open"


# -- read_lines --------------------------------------------------------------------------------------

@points(2, hint="Yield each line of the file without its trailing newline, in order.")
def test_read_lines_yields_lines(student, tmp_path: Path, rng: random.Random, observe) -> None:
    expected = seeded_lines(rng, rng.randint(20, 40))
    path = write_lines(tmp_path / "access.log", expected)
    got = list(student.read_lines(str(path)))
    observe(got)
    assert got == expected, first_difference(got, expected)


@points(2, hint="Open the file with `with` inside the generator, so close() on the generator closes it.")
def test_read_lines_closes_file_when_stopped_early(student, tmp_path: Path, rng: random.Random, observe,
                                                   opened) -> None:
    lines = seeded_lines(rng, 20)
    path = write_lines(tmp_path / "access.log", lines)
    k = rng.randint(1, 5)
    gen = student.read_lines(str(path))
    got = list(islice(gen, k))
    open_while_paused = bool(opened) and not opened[-1].closed
    gen.close()
    closed = bool(opened) and all(f.closed for f in opened)
    observe({"lines before close": got, "open while paused": open_while_paused, "closed by close()": closed})
    assert got == lines[:k], first_difference(got, lines[:k])
    assert opened, "read_lines never opened the file with open()"
    assert open_while_paused, f"the file should still be open while the generator is paused after {k} lines"
    assert closed, f"closing the generator after {k} lines must close the file; {still_open(opened)}"


# -- follow ------------------------------------------------------------------------------------------

@points(2, hint="Start at the end of the file (f.seek(0, 2)) and yield each line appended later.",
        params="a file holding 1 to 4 old lines, 3 lines appended one per poll, max_idle_polls=2")
def test_follow_yields_appended_lines(student, tmp_path: Path, rng: random.Random, observe) -> None:
    old, new = words(rng, rng.randint(1, 4)), words(rng, 3)
    path = write_lines(tmp_path / "live.log", [f"old {word}" for word in old])
    got = list(student.follow(str(path), appender(path, [f"{word}\n" for word in new]), max_idle_polls=2))
    observe(got)
    assert got == new, f"expected only the appended lines {new!r}, got {got!r}"


@points(2, hint="Keep the piece read so far until its newline arrives; yield the whole line once.",
        params="one line written in 3 pieces over 3 polls, then one more line; max_idle_polls=2")
def test_follow_joins_lines_written_in_pieces(student, tmp_path: Path, rng: random.Random, observe) -> None:
    first, second, after = words(rng, 3)
    line = f"GET /{first}/{second} HTTP/1.1"
    cut1, cut2 = sorted(rng.sample(range(1, len(line)), 2))
    pieces = [line[:cut1], line[cut1:cut2], line[cut2:] + "\n" + after + "\n"]
    path = write_lines(tmp_path / "live.log", [])
    got = list(student.follow(str(path), appender(path, pieces), max_idle_polls=2))
    observe(got)
    assert got == [line, after], f"pieces {pieces!r} should give {[line, after]!r}, got {got!r}"


@points(1, hint="Count empty polls in a row; reset the count when a line arrives; stop at max_idle_polls.",
        params="polls write 2 to 4 lines with fewer than max_idle_polls-1 empty polls between them, "
               "max_idle_polls from 2 to 4")
def test_follow_stops_after_idle_polls(student, tmp_path: Path, rng: random.Random, observe) -> None:
    max_idle_polls = rng.randint(2, 4)
    lines = words(rng, rng.randint(2, 4))
    chunks = [lines[0] + "\n"]                       # each poll writes one chunk; "" is an empty poll
    for line in lines[1:]:
        chunks += [""] * rng.randint(0, max_idle_polls - 2) + [line + "\n"]
    path = write_lines(tmp_path / "live.log", [])
    calls = []
    poll = appender(path, chunks)

    def counting_poll() -> None:
        calls.append(1)
        poll()

    got = list(student.follow(str(path), counting_poll, max_idle_polls=max_idle_polls))
    observe({"lines": got, "polls": len(calls)})
    assert got == lines, f"polls writing {chunks!r} should give {lines!r}, got {got!r}"
    # one poll per chunk, then max_idle_polls empty polls in a row after the last line
    expected = len(chunks) + max_idle_polls
    assert len(calls) == expected, (f"with max_idle_polls={max_idle_polls} and polls writing {chunks!r}, "
                                    f"expected {expected} polls, got {len(calls)}")


@points(1, hint="Use `with open(...)` inside follow as well.", params="closed after the first line, max_idle_polls=5")
def test_follow_closes_file(student, tmp_path: Path, rng: random.Random, observe, opened) -> None:
    first, second = words(rng, 2)
    path = write_lines(tmp_path / "live.log", [])
    gen = student.follow(str(path), appender(path, [f"{first}\n", f"{second}\n"]), max_idle_polls=5)
    got = next(gen)
    gen.close()
    closed = bool(opened) and all(f.closed for f in opened)
    observe({"first line": got, "closed by close()": closed})
    assert got == first, f"expected the first appended line {first!r}, got {got!r}"
    assert opened, "follow never opened the file with open()"
    assert closed, f"closing the generator after its first line must close the file; {still_open(opened)}"


# -- grep --------------------------------------------------------------------------------------------

@points(1, hint="Use re.compile(pattern).search(line): the pattern is a regular expression, not a plain string.")
def test_grep_filters_with_a_regex(student, rng: random.Random, observe) -> None:
    lines = seeded_lines(rng, rng.randint(15, 30))
    digit = rng.choice(sorted({str(record(line)["status"])[0] for line in lines}))
    pattern = rf'" {digit}\d\d '                          # a status of {digit}xx
    decoys = [f"{digit}xx", pattern]                       # the pattern's own text does not match the regex
    expected = [line for line in lines if record(line)["status"] // 100 == int(digit)]
    for decoy in decoys:
        lines.insert(rng.randint(0, len(lines)), decoy)
    got = list(student.grep(pattern, lines))
    observe(got)
    assert got == expected, (f"grep({pattern!r}, lines) should pass on the {len(expected)} lines with a {digit}xx "
                             f"status, in order; {first_difference(got, expected)}")


@points(2, hint="grep must be a generator (or return a generator expression), not build a list.")
def test_grep_is_lazy(student, rng: random.Random, observe) -> None:
    lines = seeded_lines(rng, 300)
    host = lines[rng.randrange(10, 100)].split()[0]
    pattern = rf"^{re.escape(host)} "
    wanted = next(i for i, line in enumerate(lines) if line.startswith(host + " "))
    pulled = 0

    def source():
        nonlocal pulled
        for line in lines:
            pulled += 1
            yield line

    matches = student.grep(pattern, source())
    before = pulled
    first = next(iter(matches), None)
    observe({"pulled before next()": before, "first match": first, "pulled for it": pulled})
    assert before == 0, f"grep read {before} lines before anyone asked for a result"
    assert first == lines[wanted], f"the first match of {pattern!r} is {lines[wanted]!r}, got {first!r}"
    assert pulled == wanted + 1, (f"grep pulled {pulled} lines to find the first match, which is line {wanted + 1}: "
                                  f"a lazy grep pulls no more than that")


# -- parse -------------------------------------------------------------------------------------------

@points(2, hint="status and bytes are ints; a '-' size means 0. Use the LINE regex's named groups.")
def test_parse_fields(student, rng: random.Random, observe) -> None:
    expected = []
    for path in words(rng, rng.randint(2, 4)):
        expected.append({"host": f"10.{rng.randint(0, 3)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                         "method": rng.choice(["GET", "POST", "HEAD", "PUT"]), "path": f"/{path}",
                         "status": rng.choice([200, 201, 301, 304, 404, 500]), "bytes": rng.randint(1, 50_000)})
    rng.choice(expected)["bytes"] = 0                        # written as "-" in the log
    lines = [f'{r["host"]} - - [14/Mar/2026:09:26:54 +0000] "{r["method"]} {r["path"]} HTTP/1.1" {r["status"]} '
             f'{r["bytes"] or "-"} "-" "curl/8.5.0"' for r in expected]
    got = list(student.parse(lines))
    observe(got)
    assert got == expected, first_difference(got, expected, "record")


@points(1, hint="Skip lines that LINE.match() does not match instead of raising.")
def test_parse_skips_malformed_lines(student, rng: random.Random, observe) -> None:
    good = seeded_lines(rng, rng.randint(2, 5))
    lines = list(good)
    for junk in ["garbage", "", "GET / 200", good[0][: len(good[0]) // 2], *words(rng, 1)]:
        lines.insert(rng.randint(0, len(lines)), junk)
    got = list(student.parse(lines))
    observe(got)
    expected = [record(line) for line in good]
    assert got == expected, f"{len(good)} of the {len(lines)} lines are well formed; " + \
        first_difference(got, expected, "record")


@points(1, hint="parse must be a generator too.")
def test_parse_is_lazy(student, rng: random.Random, observe) -> None:
    lines = seeded_lines(rng, 1_000)
    pulled = 0

    def source():
        nonlocal pulled
        for line in lines:
            pulled += 1
            yield line

    records = student.parse(source())
    before = pulled
    first = next(iter(records), None)
    observe({"pulled before next()": before, "first record": first, "pulled for it": pulled})
    assert before == 0, f"parse read {before} lines before anyone asked for a record"
    assert first == record(lines[0]), f"expected {record(lines[0])!r}, got {first!r}"
    assert pulled == 1, f"parse pulled {pulled} lines to make the first record; 1 was enough"


# -- top_paths and first_errors ----------------------------------------------------------------------

@points(2, hint="Count with collections.Counter; sort by count (high first), then by path.")
def test_top_paths(student, rng: random.Random, observe) -> None:
    paths = rng.sample(PATHS, 5)
    counts = {path: rng.randint(1, 4) for path in paths}
    earlier, later = sorted(rng.sample(paths, 2))            # these two tie for the most frequent path
    counts[earlier] = counts[later] = max(counts.values()) + 1
    records = [{"path": path} for path, count in counts.items() for _ in range(count)]
    rng.shuffle(records)
    records.remove({"path": later})                          # the later one A to Z comes first in the input,
    records.insert(0, {"path": later})                       # so a tie left in input order shows
    n = rng.randint(2, 4)
    ranked = sorted(Counter(r["path"] for r in records).items(), key=lambda kv: (-kv[1], kv[0]))
    got, every = student.top_paths(iter(records), n=n), student.top_paths(records, n=10)
    observe({"top n": got, "n=10": every})
    assert got == ranked[:n], f"top_paths(records, n={n}): expected {ranked[:n]!r}, got {got!r}"
    assert every == ranked, f"top_paths(records, n=10) with only {len(ranked)} paths: expected {ranked!r}, got {every!r}"


@points(2, hint="Chain read_lines → parse → a filter, then take k with itertools.islice; never build a full list.")
def test_first_errors_reads_only_what_it_needs(student, tmp_path: Path, seed: int, rng: random.Random, observe,
                                               opened) -> None:
    log = write_access_log(tmp_path / "access.log", n=500, seed=seed)
    lines = make_access_log_lines(500, seed=seed)
    at = [i for i, line in enumerate(lines) if record(line)["status"] >= 500]
    k = rng.randint(1, 4)
    expected = [record(lines[i]) for i in at[:k]]
    needed = at[k - 1] + 1                                   # the line of the k-th error
    got = student.first_errors(str(log), k)
    read = sum(f.lines_read for f in opened)
    closed = bool(opened) and all(f.closed for f in opened)
    observe({"errors": got, "read no more than needed (+1)": read <= needed + 1, "closed": closed})
    assert got == expected, f"first_errors(log, {k}): " + first_difference(got, expected, "record")
    assert read <= needed + 1, f"read {read} lines; the first {needed} hold the first {k} errors"
    assert closed, f"the file should be closed when first_errors returns; {still_open(opened)}"
