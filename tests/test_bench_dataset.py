"""The shipped chat dataset and the JSONL loader: the set loads from the installed package, its lengths
are long-tailed, and a bad line is an error that names the file and the line."""

from __future__ import annotations

import json
import statistics
from importlib import resources

import pytest

from corolab.bench import BenchConfig, DatasetError, builtin_datasets, load_jsonl
from corolab.bench.cli import config_from_args
from corolab.bench.dataset import prompts_for
from corolab.cli import build_parser


def _rows() -> list[dict]:
    text = (resources.files("corolab.bench") / "data" / "chats.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_builtin_chats_load_through_the_package():
    assert "builtin:chats" in builtin_datasets()
    chats = load_jsonl("builtin:chats")
    rows = _rows()
    assert len(chats) == len(rows) >= 150
    assert [p.max_tokens for p in chats] == [row["max_tokens"] for row in rows]
    assert [p.text for p in chats] == [row["messages"][-1]["content"] for row in rows]


def test_builtin_chats_are_varied():
    rows = _rows()
    chats = load_jsonl("builtin:chats")
    assert len({row["topic"] for row in rows}) >= 5
    assert sum(len(p.history) > 0 for p in chats) >= 10  # multi-turn conversations
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in p.text) for p in chats) >= 5  # Chinese ones
    assert len({p.text for p in chats}) == len(chats)  # no request twice


@pytest.mark.parametrize("length", ["reply", "prompt"])
def test_builtin_chat_lengths_are_long_tailed(length):
    chats = load_jsonl("builtin:chats")
    xs = sorted(p.max_tokens if length == "reply" else sum(len(m["content"]) for m in p.messages())
                for p in chats)
    median, mean = statistics.median(xs), statistics.mean(xs)
    assert mean > 1.2 * median  # a right tail pulls the mean above the median
    assert xs[-1] > 5 * median  # and the tail is long
    assert xs[int(0.9 * len(xs))] > 2 * xs[int(0.1 * len(xs))]  # varied, not a spike


def test_builtin_chats_fit_the_fake_models_context_window():
    from corolab.serving.backends.fake import FakeBackend

    fake = FakeBackend()
    for p in load_jsonl("builtin:chats"):
        assert len(fake.encode_chat(p.messages())) + p.max_tokens <= fake.info.context_window


def test_the_cli_takes_the_builtin_name():
    args = build_parser().parse_args(["bench", "--dataset", "builtin:chats", "--requests", "3"])
    assert len(prompts_for(config_from_args(args))) == len(_rows())


def test_an_unknown_builtin_name_lists_the_real_ones():
    with pytest.raises(DatasetError, match="builtin:nope.*builtin:chats"):
        load_jsonl("builtin:nope")


@pytest.mark.parametrize(("line", "why"), [
    ('{"prompt": "hi"', "Expecting"),
    ('["hi"]', "JSON object"),
    ('{"max_tokens": 3}', "expected 'prompt', 'query' or 'messages'"),
    ('{"prompt": "hi", "max_tokens": "lots"}', "max_tokens must be a positive integer"),
    ('{"prompt": "hi", "max_tokens": 0}', "max_tokens must be a positive integer"),
    ('{"prompt": "hi", "max_tokens": true}', "max_tokens must be a positive integer"),
    ('{"prompt": 7}', "prompt must be a string"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "role of"),
    ('{"messages": [{"role": "user", "content": null}]}', r"messages\[0\].content must be a string"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}', "user's"),
    ('{"query": "q", "history": [["only one"]]}', "history must be a list"),
])
def test_a_bad_line_names_the_file_and_the_line(tmp_path, line, why):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "fine"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"^{path}:3: .*{why}"):
        load_jsonl(path)


def test_a_missing_or_empty_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        load_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="no prompts"):
        load_jsonl(tmp_path / "empty.jsonl")


def test_the_bench_command_reports_a_bad_dataset_without_a_traceback(tmp_path, capsys):
    from corolab.bench import cli as bench_cli

    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "hi", "max_tokens": -1}\n')
    rc = bench_cli.run(build_parser().parse_args(
        ["bench", "--url", "http://127.0.0.1:9", "--dataset", str(path), "--requests", "1", "--no-progress"]))
    err = capsys.readouterr().err
    assert rc == 2 and f"{path}:1: max_tokens" in err and "Traceback" not in err


def test_benchconfig_accepts_the_builtin_name():
    assert len(prompts_for(BenchConfig(dataset="builtin:chats"))) == len(_rows())
