"""Reports: a text table for people, JSON for notebooks and comparisons, CSV with one row per request."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

METRICS = ("ttft", "tpot", "itl", "e2el")


def _ms(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1e3:.1f}"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def run_lines(run) -> list[str]:
    s = run.summary
    label = f"concurrency {int(run.level)}" if run.kind == "concurrency" else f"rate {run.level:g} req/s"
    lines = [f"== {label}{'  (interrupted)' if run.interrupted else ''} =="]
    lines.append(f"  completed {s['completed']}/{s['requests']} in {_num(s['duration'], '{:.2f}')} s"
                 + (f", {run.cancelled_in_flight} cancelled in flight" if run.cancelled_in_flight else ""))
    lines.append(f"  throughput {_num(s['request_throughput'], '{:.2f}')} req/s, "
                 f"{_num(s['output_throughput'])} output tok/s"
                 + (f", goodput {_num(s['goodput'], '{:.2f}')} req/s" if s.get("goodput") is not None else ""))
    lines.append(f"  output tokens {s['output_tokens']} (server usage for {s['usage_from_server']}/{s['completed']})")
    lines.append(f"  {'ms':<6}{'mean':>9}{'median':>9}{'p90':>9}{'p99':>9}")
    for m in METRICS:
        st = s[m]
        lines.append(f"  {m.upper():<6}" + "".join(f"{_ms(st[k]):>9}" for k in ("mean", "median", "p90", "p99")))
    if s["errors"]:
        lines.append("  errors: " + ", ".join(f"{k}={v}" for k, v in sorted(s["errors"].items())))
    c = run.client
    if c:
        # Measured during this level only (each level has its own LoopMonitor), so levels can be compared.
        during = f" over this level's {c['seconds']:.1f} s" if "seconds" in c else " during this level"
        lines.append(f"  client{during}: cpu {c['client_cpu']:.0%} of a core, "
                     f"loop lag p99 {c['loop_lag_p99'] * 1e3:.1f} ms")
    lines += [f"  WARNING: {w}" for w in run.warnings]
    return lines


def sweep_table(result) -> list[str]:
    if len(result.runs) < 2:
        return []
    kind = result.runs[0].kind
    name = "conc" if kind == "concurrency" else "rate"
    head = f"{name:>6}{'req/s':>9}{'tok/s':>9}{'TTFT p50':>10}{'TPOT p50':>10}{'errors':>8}"
    rows = [head]
    for r in result.runs:
        s = r.summary
        rows.append(f"{r.level:>6g}{_num(s['request_throughput'], '{:.2f}'):>9}{_num(s['output_throughput']):>9}"
                    f"{_ms(s['ttft']['median']):>10}{_ms(s['tpot']['median']):>10}{s['failed']:>8}")
    return rows


def summary_table(result) -> str:
    """The end-of-run summary: one block per run, then a sweep table when there are several."""
    lines = [f"corolab bench  {result.config.get('endpoint', '')}  mode={result.config.get('mode')}"]
    for run in result.runs:
        lines += run_lines(run)
    lines += sweep_table(result)
    return "\n".join(lines)


def to_dict(result, *, records: bool = True) -> dict:
    out = {"config": result.config, "runs": []}
    for run in result.runs:
        d = run.as_dict()
        if records:
            d["records"] = [r.row() | {"chunk_times": r.chunk_times} for r in run.records]
        out["runs"].append(d)
    return out


def _finite(obj):
    """NaN (a metric with no samples) becomes null: strict JSON readers reject NaN."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(result, path: str | Path, *, records: bool = True) -> None:
    data = _finite(to_dict(result, records=records))
    Path(path).write_text(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")


CSV_FIELDS = ("kind", "level", "index", "error", "detail", "ttft", "tpot", "e2el", "output_tokens", "chunks",
              "prompt_tokens", "usage_from_server", "start", "first_token", "end", "itl")


def write_csv(result, path: str | Path) -> None:
    """One row per request, every run; ITL is a space-separated list in seconds."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for run in result.runs:
            for rec in run.records:
                w.writerow({"kind": run.kind, "level": run.level} | rec.row())
