"""Every serving setting's default is written once, in ``corolab.serving.config``; every named setting's
allowed values once, in ``corolab.serving.choices``.

The defaults are read from the config alone. The serving sources are parsed (``ast``) for a setting's name
given a literal value anywhere else (a parameter's default, a class attribute, a keyword argument): that
is a default restated, which drifts the day the config changes. ``None`` stays allowed ("not given").
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from corolab.serving.choices import Attention, Device, Dtype, EngineKind, KvCacheDtype, LogLevel, Quantize, choices
from corolab.serving.config import ModelConfig, ServeConfig

SERVING = Path(__file__).resolve().parents[1] / "src" / "corolab" / "serving"
#: The modules allowed to write a setting's value: the config, and the choices (no defaults there).
OWNERS = {SERVING / "config.py", SERVING / "choices.py"}
SETTINGS = frozenset(f.name for f in fields(ServeConfig))


def defaults() -> dict[str, object]:
    """Each setting's default, from the config alone."""
    return {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(ServeConfig)}


def _literal(node: ast.AST | None) -> bool:
    """A value written in place: a number, a string or a bool (``None`` is "not given"), or an
    expression of them (``1 << 20``, ``-1``)."""
    if isinstance(node, ast.Constant):
        return node.value is not None
    if isinstance(node, ast.UnaryOp):
        return _literal(node.operand)
    if isinstance(node, ast.BinOp):
        return _literal(node.left) and _literal(node.right)
    return False


#: Calls that take settings by keyword: a literal given to one of them restates a default. (Other calls may
#: well use a setting's name for something else: ``torch.Generator(device="cpu")`` is not ``--device``.)
TAKE_SETTINGS = {"ServeConfig", "ModelConfig", "load_backend", "HFBackend", "EmbeddedBackend", "Scheduler",
                 "create_engine", "create_app", "replace"}


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def restated_defaults(source: str, where: str) -> list[str]:
    """Places in ``source`` where a setting's name is given a literal value."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [f"{where}:{d.lineno}: parameter {a.arg}={ast.unparse(d)}"
                      for a, d in pairs if a.arg in SETTINGS and _literal(d)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id in SETTINGS and _literal(node.value):
                found.append(f"{where}:{node.lineno}: {node.target.id} = {ast.unparse(node.value)}")
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            found += [f"{where}:{node.lineno}: {n} = {ast.unparse(node.value)}"
                      for n in names if n in SETTINGS and _literal(node.value)]
        elif isinstance(node, ast.Call) and _callee(node) in TAKE_SETTINGS:
            found += [f"{where}:{k.value.lineno}: {k.arg}={ast.unparse(k.value)} in a call"
                      for k in node.keywords if k.arg in SETTINGS and _literal(k.value)]
    return found


def test_the_defaults_are_the_config_s() -> None:
    """The figures the book and the README quote, read from the config and nowhere else."""
    d = defaults()
    assert (d["max_batch_size"], d["max_waiting"], d["prefill_budget"], d["max_tokens"]) == (128, 256, 2048, 256)
    assert d["kv_cache_gib"] == 4.0
    assert (d["device"], d["dtype"], d["quantize"], d["attention"], d["engine"]) == (
        "auto", "auto", "auto", "exact", "batched")
    assert ServeConfig().model_config() == ModelConfig()


def test_no_serving_module_restates_a_default() -> None:
    found = []
    for path in sorted(SERVING.rglob("*.py")):
        if path not in OWNERS:
            found += restated_defaults(path.read_text(), str(path.relative_to(SERVING)))
    assert found == [], "defaults belong in corolab.serving.config:\n" + "\n".join(found)


@pytest.mark.parametrize("planted", [
    "def load(model, *, quantize='int8'): ...",
    "class Scheduler:\n    def __init__(self, max_batch_size=32): ...",
    "class Params:\n    max_tokens: int = 256",
    "engine = create_engine('batched', backend, prefill_budget=512)",
    "limit = 1 << 20\nmax_body_bytes = 1 << 20",
])
def test_the_scan_sees_a_planted_default(planted: str) -> None:
    assert len(restated_defaults(planted, "planted.py")) == 1


def test_the_scan_lets_not_given_and_config_reads_pass() -> None:
    allowed = ("def f(threads: int | None = None, model=None): ...\n"
               "class P:\n    max_tokens: int = ServeConfig.max_tokens\n"
               "Scheduler(max_batch_size=config.max_batch_size)\n"
               "torch.Generator(device='cpu')  # not --device")
    assert restated_defaults(allowed, "allowed.py") == []


def test_entry_points_take_the_config_and_keep_no_defaults() -> None:
    """What the book and the server call: a setting comes from a config or a keyword override, never from a
    default of the callee's own."""
    from corolab.serving.backends import load_backend
    from corolab.serving.backends.embedded import EmbeddedBackend
    from corolab.serving.backends.hf import HFBackend
    from corolab.serving.engine import create_engine
    from corolab.serving.engine.scheduler import Scheduler

    for entry in (load_backend, HFBackend, EmbeddedBackend, Scheduler, create_engine):
        named = [p.name for p in inspect.signature(entry).parameters.values()
                 if p.name in SETTINGS and p.default is not inspect.Parameter.empty]
        assert named == [], f"{entry.__qualname__} has defaults of its own for {named}"


def test_overrides_meet_the_config_s_defaults() -> None:
    from corolab.serving.engine.scheduler import Scheduler

    s = Scheduler(max_batch_size=4)
    assert (s.max_batch_size, s.max_waiting, s.prefill_budget) == (4, defaults()["max_waiting"],
                                                                   defaults()["prefill_budget"])
    with pytest.raises(ValueError, match="--prefill-budget must be at least 1"):
        Scheduler(prefill_budget=0)


def test_the_cli_offers_exactly_the_literal_choices() -> None:
    from corolab import cli

    parser = cli.build_parser(only="serve")
    serve = next(a for a in parser._subparsers._group_actions[0].choices.values())  # noqa: SLF001
    offered = {a.dest: tuple(a.choices) for a in serve._actions if a.choices}  # noqa: SLF001
    assert offered == {"engine": choices(EngineKind), "device": choices(Device), "dtype": choices(Dtype),
                       "quantize": choices(Quantize), "attention": choices(Attention),
                       "kv_cache_dtype": choices(KvCacheDtype), "log_level": choices(LogLevel)}


def test_one_validator_refuses_a_value_outside_its_literal() -> None:
    for name in ("device", "dtype", "quantize", "attention", "kv_cache_dtype"):
        with pytest.raises(ValueError, match=f"unknown --{name.replace('_', '-')} 'nope'"):
            ModelConfig(**{name: "nope"}).validate()
    with pytest.raises(ValueError, match="unknown --engine 'nope'"):
        ServeConfig(engine="nope").validate()  # type: ignore[arg-type]
