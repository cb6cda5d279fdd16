"""Prompts for a load test: a seeded synthetic generator, a JSONL file of real ones, or a shipped set.

Synthetic prompts make runs repeatable and let a sweep hold the prompt length fixed while it varies the
load. Real traffic does not hold lengths fixed: ``builtin:chats`` (``data/chats.jsonl``) is a set of
real-looking conversations whose prompt and reply lengths are long-tailed, so a run can measure what that
does to latency without downloading anything.

Synthetic lengths are in words, which is close to tokens for common English words; the server's ``usage``
gives the exact count, and the report uses that.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

_WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one have this from or had by "
    "hot word but what some we can out other were all there when up use your how said an each she which do "
    "their time if will way about many then them write would like so these her long make thing see him two "
    "has look more day could go come did number sound no most people my over know water than call first who "
    "may down side been now find any new work part take get place made live where after back little only "
    "round man year came show every good me give our under name very through just form sentence great think"
).split()


@dataclass(frozen=True)
class Prompt:
    """One request's input. ``history`` is a list of prior (user, assistant) turns."""

    text: str
    max_tokens: int
    history: tuple[tuple[str, str], ...] = field(default=())

    def messages(self) -> list[dict]:
        out: list[dict] = []
        for user, assistant in self.history:
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        out.append({"role": "user", "content": self.text})
        return out


def synthetic_prompts(n: int, *, prompt_tokens: int = 32, max_tokens: int = 32, seed: int = 0) -> list[Prompt]:
    """``n`` distinct prompts of ``prompt_tokens`` words each; the same seed gives the same prompts."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        words = [rng.choice(_WORDS) for _ in range(max(prompt_tokens - 2, 1))]
        prompts.append(Prompt(f"{i}: " + " ".join(words), max_tokens))
    return prompts


class DatasetError(ValueError):
    """A dataset that cannot be used: the message names the file (and the line) and what is wrong."""


BUILTIN = "builtin:"
_ROLES = ("system", "user", "assistant")


def builtin_datasets() -> list[str]:
    """The datasets shipped inside the package (``src/corolab/bench/data/*.jsonl``), as ``builtin:NAME``."""
    folder = resources.files("corolab.bench") / "data"
    return sorted(BUILTIN + f.name[: -len(".jsonl")] for f in folder.iterdir() if f.name.endswith(".jsonl"))


def _read_text(source: str | Path) -> str:
    """A file's text, or a shipped dataset's, read through importlib.resources so a wheel finds it too."""
    if isinstance(source, str) and source.startswith(BUILTIN):
        if source not in builtin_datasets():
            raise DatasetError(f"{source}: no such built-in dataset; there are {', '.join(builtin_datasets())}")
        name = source[len(BUILTIN):] + ".jsonl"
        return (resources.files("corolab.bench") / "data" / name).read_text(encoding="utf-8")
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{source}: cannot read it: {exc}") from exc


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    return value


def _prompt_from_row(row, max_tokens: int) -> Prompt:
    """One parsed line as a Prompt; ValueError says what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, not {type(row).__name__}")
    limit = row.get("max_tokens", max_tokens)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_tokens must be a positive integer, not {limit!r}")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("messages must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in _ROLES:
                raise ValueError(f"messages[{i}] must be an object with a role of {', '.join(_ROLES)}")
            _text(m.get("content"), f"messages[{i}].content")
        if msgs[-1]["role"] != "user":
            raise ValueError("the last message must be the user's")
        users = [m["content"] for m in msgs if m["role"] == "user"]
        assistants = [m["content"] for m in msgs if m["role"] == "assistant"]
        return Prompt(users[-1], limit, tuple(zip(users[:-1], assistants)))
    text = row.get("prompt", row.get("query"))
    if text is None:
        raise ValueError("expected 'prompt', 'query' or 'messages'")
    history = row.get("history", [])
    if not isinstance(history, list) or not all(isinstance(t, list) and len(t) == 2 for t in history):
        raise ValueError("history must be a list of [user, assistant] pairs")
    turns = tuple((_text(u, "history"), _text(a, "history")) for u, a in history)
    return Prompt(_text(text, "prompt"), limit, turns)


def load_jsonl(source: str | Path, *, max_tokens: int = 32) -> list[Prompt]:
    """Read prompts from JSONL: a file, or ``builtin:NAME`` for a dataset shipped with the package.

    Each line has ``prompt`` (or ``query``, or chat ``messages`` ending with the user's turn) and may set
    ``max_tokens``; ``history`` is a list of ``[user, assistant]`` pairs (the websocket shape). Other keys
    (a ``topic``, say) are ignored. A line that is not valid is a :class:`DatasetError` naming the file and
    the line, never a silently skipped request.
    """
    prompts = []
    for lineno, line in enumerate(_read_text(source).splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompts.append(_prompt_from_row(json.loads(line), max_tokens))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            raise DatasetError(f"{source}:{lineno}: {exc}") from None
    if not prompts:
        raise DatasetError(f"{source}: no prompts")
    return prompts


def prompts_for(config) -> list[Prompt]:
    """The prompt pool for a config; runs cycle through it when they need more requests than it holds."""
    if config.dataset:
        return load_jsonl(config.dataset, max_tokens=config.max_tokens)
    n = config.requests or 1024
    return synthetic_prompts(min(n, 4096), prompt_tokens=config.prompt_tokens, max_tokens=config.max_tokens,
                             seed=config.seed)
