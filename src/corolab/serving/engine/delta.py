"""One streamed piece of a reply: what an engine hands the transport, and a request handle carries.

A module of its own so that the engine contract (:mod:`corolab.serving.engine.base`) and the request handle
(:mod:`corolab.serving.engine.handle`) can both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from corolab.serving.params import FinishReason


@dataclass(frozen=True)
class Delta:
    """One streamed piece of a reply.

    ``text`` may be empty (for example the final delta that only carries ``finish_reason``).
    Token counts are cumulative for the request so the last delta carries the usage.
    """

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


__all__ = ["Delta"]
