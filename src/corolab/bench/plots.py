"""Plots that return a matplotlib Figure, so a notebook shows them and a script saves them.

Latency CDFs show the whole distribution (the tail is where users notice); the sweep plots show the knee
where more load stops buying throughput and starts costing latency.
"""

from __future__ import annotations

from matplotlib.figure import Figure

_METRICS = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E latency"}


def _values(run, metric: str) -> list[float]:
    ok = [r for r in run.records if r.ok]
    if metric == "itl":
        return [g for r in ok for g in r.itl]
    return [v for r in ok if (v := getattr(r, metric)) is not None]


def _label(run) -> str:
    return f"c={int(run.level)}" if run.kind == "concurrency" else f"{run.level:g} req/s"


def latency_cdfs(result, metrics=("ttft", "tpot", "itl", "e2el")) -> Figure:
    """One panel per metric, one curve per run, in milliseconds."""
    fig = Figure(figsize=(4 * len(metrics), 3.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for run in result.runs:
            xs = sorted(v * 1e3 for v in _values(run, metric))
            if xs:
                ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=_label(run))
        ax.set(title=f"{_METRICS[metric]} CDF", xlabel="ms", ylabel="fraction of requests", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    if result.runs:
        axes[0].legend(fontsize="small")
    return fig


def sweep(result) -> Figure:
    """Throughput and median/p99 TTFT against the swept concurrency or rate."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax_tp, ax_ttft = fig.subplots(1, 2)
    runs = result.runs
    xs = [r.level for r in runs]
    xlabel = "concurrency" if runs and runs[0].kind == "concurrency" else "request rate (req/s)"
    ax_tp.plot(xs, [r.summary["output_throughput"] for r in runs], "o-", label="output tok/s")
    ax_tp.set(title="throughput", xlabel=xlabel, ylabel="output tokens / s")
    ax_rps = ax_tp.twinx()
    ax_rps.plot(xs, [r.summary["request_throughput"] for r in runs], "s--", color="C1", label="req/s")
    ax_rps.set_ylabel("requests / s")
    for q, style in (("median", "o-"), ("p99", "^--")):
        ax_ttft.plot(xs, [r.summary["ttft"][q] * 1e3 for r in runs], style, label=f"TTFT {q}")
    ax_ttft.set(title="time to first token", xlabel=xlabel, ylabel="ms")
    ax_ttft.legend(fontsize="small")
    for ax in (ax_tp, ax_ttft):
        ax.grid(alpha=0.3)
        if runs and runs[0].kind == "concurrency" and len(xs) > 2:
            ax.set_xscale("log", base=2)
    return fig


def save(result, path: str) -> list[str]:
    """Write the CDFs to ``path`` and, for a sweep, the sweep plots beside it (``<stem>-sweep<ext>``)."""
    from pathlib import Path

    p = Path(path)
    latency_cdfs(result).savefig(p, dpi=110)
    written = [str(p)]
    if len(result.runs) > 1:
        other = p.with_name(p.stem + "-sweep" + p.suffix)
        sweep(result).savefig(other, dpi=110)
        written.append(str(other))
    return written
