"""Reports and plots from a real (instant-server) run, and the ``corolab bench`` command line."""

import csv
import json

import pytest
from matplotlib.figure import Figure

from corolab.bench import BenchConfig, run_bench
from corolab.bench import cli as bench_cli
from corolab.bench.fakeserver import FakeChatServer
from corolab.bench.plots import latency_cdfs, save, sweep
from corolab.cli import build_parser


@pytest.fixture
async def sweep_result():
    async with FakeChatServer() as server:
        return await run_bench(BenchConfig(url=server.url, concurrency=[1, 4], requests=12, max_tokens=5,
                                           progress=False, ttft_limit=10.0, tpot_limit=10.0))


async def test_json_holds_summaries_and_records(sweep_result, tmp_path):
    path = tmp_path / "out.json"
    sweep_result.to_json(path)
    data = json.loads(path.read_text())
    assert [r["level"] for r in data["runs"]] == [1, 4]
    run = data["runs"][1]
    assert run["summary"]["completed"] == 12 and run["summary"]["output_tokens"] == 60
    assert run["summary"]["goodput"] == pytest.approx(run["summary"]["request_throughput"])
    assert len(run["records"]) == 12 and len(run["records"][0]["chunk_times"]) == 5
    assert data["config"]["endpoint"].endswith("/v1/chat/completions") and "clock" not in data["config"]


async def test_csv_has_one_row_per_request(sweep_result, tmp_path):
    path = tmp_path / "out.csv"
    sweep_result.to_csv(path)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 24 and {r["level"] for r in rows} == {"1", "4"}
    assert all(r["error"] == "" and int(r["output_tokens"]) == 5 for r in rows)
    assert len(rows[0]["itl"].split()) == 4 and float(rows[0]["ttft"]) >= 0


async def test_table_lists_every_metric_and_the_sweep(sweep_result):
    table = sweep_result.table()
    for word in ("TTFT", "TPOT", "ITL", "E2EL", "goodput", "concurrency 1", "concurrency 4", "req/s"):
        assert word in table


async def test_plots_return_figures(sweep_result, tmp_path):
    fig = latency_cdfs(sweep_result)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert len(fig.axes[0].lines) == 2  # one CDF per run
    assert isinstance(sweep(sweep_result), Figure)
    assert isinstance(sweep_result.plot_cdfs(), Figure) and isinstance(sweep_result.plot_sweep(), Figure)
    written = save(sweep_result, str(tmp_path / "p.png"))
    assert [p.split("/")[-1] for p in written] == ["p.png", "p-sweep.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("p.png", "p-sweep.png"))


def test_cli_parses_every_option_and_registers_under_corolab():
    args = build_parser().parse_args(
        ["bench", "--url", "http://h:1", "--model", "m", "--mode", "ws", "--rate", "2,4", "--requests", "7",
         "--duration", "3", "--prompt-tokens", "9", "--max-tokens", "11", "--ttft-limit", "200",
         "--tpot-limit", "50", "--json", "o.json", "--csv", "o.csv", "--plot", "o.png", "--api-key", "k"])
    cfg = bench_cli.config_from_args(args)
    assert (cfg.mode, cfg.rate, cfg.requests, cfg.duration) == ("ws", [2.0, 4.0], 7, 3.0)
    assert (cfg.prompt_tokens, cfg.max_tokens, cfg.api_key) == (9, 11, "k")
    assert cfg.ttft_limit == pytest.approx(0.2) and cfg.tpot_limit == pytest.approx(0.05)
    assert [lvl for _, lvl in cfg.levels()] == [2.0, 4.0]
    default = bench_cli.config_from_args(build_parser().parse_args(["bench", "--concurrency", "1,8"]))
    assert (default.requests, default.duration) == (None, bench_cli.DEFAULT_DURATION)  # a wait one can plan
    only_requests = bench_cli.config_from_args(build_parser().parse_args(["bench", "--requests", "5"]))
    assert (only_requests.requests, only_requests.duration) == (5, None)


async def test_progress_bar_names_the_level_and_counts_down_the_time(capsys):
    from corolab.bench.progress import LevelProgress, level_label

    assert level_label("concurrency", 8, 2, 3) == "bench c=8 [2/3]"
    assert level_label("rate", 2.5, 1, 2) == "bench rate=2.5/s [1/2]"
    now = [100.0]
    timed = LevelProgress(BenchConfig(concurrency=1, requests=None, duration=20.0, clock=lambda: now[0]), "t")
    now[0] = 105.0
    timed.done()
    assert (timed.bar.n, timed.bar.total, timed.completed) == (5.0, 20.0, 1)
    now[0] = 130.0                                   # the drain after the deadline never passes 100 %
    timed.done()
    assert timed.bar.n == 20.0
    timed.close()
    counted = LevelProgress(BenchConfig(concurrency=1, requests=4), "c")
    counted.done()
    assert (counted.bar.n, counted.bar.total) == (1, 4)
    counted.close()


def test_cli_self_test_writes_outputs(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = bench_cli.run(build_parser().parse_args(
        ["bench", "--self-test", "--concurrency", "2", "--requests", "20", "--max-tokens", "3", "--no-progress",
         "--json", str(out), "--csv", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "r.png")]))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "completed 20/20" in printed and "wrote" in printed
    assert json.loads(out.read_text())["runs"][0]["summary"]["output_tokens"] == 60
    assert (tmp_path / "r.csv").exists() and (tmp_path / "r.png").exists()


def test_jsonl_dataset(tmp_path):
    from corolab.bench.dataset import load_jsonl

    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "hi", "max_tokens": 3}\n\n{"query": "q", "history": [["a", "b"]]}\n'
                    '{"messages": [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},'
                    ' {"role": "user", "content": "u2"}]}\n')
    a, b, c = load_jsonl(path, max_tokens=9)
    assert (a.text, a.max_tokens) == ("hi", 3)
    assert b.history == (("a", "b"),) and b.max_tokens == 9
    assert c.text == "u2" and c.messages()[0] == {"role": "user", "content": "u1"} and len(c.messages()) == 3


def test_synthetic_prompts_are_seeded_and_sized():
    from corolab.bench.dataset import synthetic_prompts

    a = synthetic_prompts(5, prompt_tokens=20, seed=1)
    assert a == synthetic_prompts(5, prompt_tokens=20, seed=1) != synthetic_prompts(5, prompt_tokens=20, seed=2)
    assert all(len(p.text.split()) == 19 for p in a) and len({p.text for p in a}) == 5


async def test_json_is_strict_when_nothing_completed(tmp_path):
    async def fail(request, reply):
        reply.json({"error": {"message": "down"}}, status=503)

    async with FakeChatServer(fail) as server:
        result = await run_bench(BenchConfig(url=server.url, requests=2, progress=False))
    result.to_json(tmp_path / "f.json")
    data = json.loads((tmp_path / "f.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert data["runs"][0]["summary"]["ttft"]["mean"] is None
    assert data["runs"][0]["summary"]["errors"] == {"http_503": 2}


async def test_each_level_reports_the_client_figures_measured_during_it():
    # One LoopMonitor per level: its span and heartbeats are that level's, not the whole sweep's.
    async with FakeChatServer() as server:
        result = await run_bench(BenchConfig(url=server.url, concurrency=[1, 4], requests=40, progress=False,
                                             heartbeat_interval=0.005))
    first, second = (run.client for run in result.runs)
    assert first is not second
    for client in (first, second):
        assert 0 < client["seconds"] and client["beats"] <= client["seconds"] / 0.005 + 1   # sleeps bound the beats
    lines = result.table().splitlines()
    assert [line for line in lines if "client over this level's" in line] == [
        f"  client over this level's {c['seconds']:.1f} s: cpu {c['client_cpu']:.0%} of a core, "
        f"loop lag p99 {c['loop_lag_p99'] * 1e3:.1f} ms" for c in (first, second)]
