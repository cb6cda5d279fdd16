"""The one ``corolab`` command: ``serve | bench | lab | model``.

Each sub-command lives in the module that owns the work and registers itself here through an
``add_parser(subparsers)`` function, so this file stays a table of contents. Imports are lazy: ``corolab
lab check`` must not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module with add_parser(subparsers) that sets a ``func(args) -> int`` default
COMMANDS: dict[str, str] = {
    "serve": "corolab.serving.server.cli",
    "model": "corolab.serving.backends.cli",
    "lab": "corolab.labs.cli",
    "bench": "corolab.bench.cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corolab", description="corolab: serve an LLM, load-test it, run the labs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"(run 'corolab {name} -h')")
            continue
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
