"""Prompts for a load test: a seeded synthetic generator, or a JSONL file of real ones.

Synthetic prompts make runs repeatable and let a sweep hold the prompt length fixed while it varies the
load. Lengths are in words, which is close to tokens for common English words; the server's ``usage``
gives the exact count, and the report uses that.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
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


def load_jsonl(path: str | Path, *, max_tokens: int = 32) -> list[Prompt]:
    """Read prompts from JSONL. Each line has ``prompt`` (or ``query``, or chat ``messages``) and may set
    ``max_tokens``; ``history`` is a list of ``[user, assistant]`` pairs (the websocket shape)."""
    prompts = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        limit = int(row.get("max_tokens", max_tokens))
        history = tuple(tuple(turn) for turn in row.get("history", ()))
        if "messages" in row:
            msgs = row["messages"]
            users = [m["content"] for m in msgs if m["role"] == "user"]
            assistants = [m["content"] for m in msgs if m["role"] == "assistant"]
            if not users:
                raise ValueError(f"{path}:{lineno}: messages has no user turn")
            history = tuple(zip(users[:-1], assistants))
            text = users[-1]
        else:
            text = row.get("prompt", row.get("query"))
            if text is None:
                raise ValueError(f"{path}:{lineno}: expected 'prompt', 'query' or 'messages'")
        prompts.append(Prompt(str(text), limit, history))  # type: ignore[arg-type]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def prompts_for(config) -> list[Prompt]:
    """The prompt pool for a config; runs cycle through it when they need more requests than it holds."""
    if config.dataset:
        return load_jsonl(config.dataset, max_tokens=config.max_tokens)
    n = config.requests or 1024
    return synthetic_prompts(min(n, 4096), prompt_tokens=config.prompt_tokens, max_tokens=config.max_tokens,
                             seed=config.seed)
