"""Server-sent events for ``chat.completion.chunk`` objects, ending with ``data: [DONE]``.

Content chunks are the hot path (one per token), so they are built from a per-request template around
``json.dumps`` of the new text instead of a full model dump; a test checks that the result parses as the
same :class:`~corolab.protocol.ChatCompletionChunk` the model would produce.
"""

from __future__ import annotations

import json

from corolab.protocol import ChatCompletionChunk, ChunkChoice, DeltaMessage, Usage

DONE = b"data: [DONE]\n\n"


def event(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


class ChunkWriter:
    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.id, self.created, self.model = completion_id, created, model
        head = json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model})
        self._prefix = head[:-1] + ', "choices": [{"index": 0, "delta": {"content": '
        self._suffix = '}, "finish_reason": null, "logprobs": null}], "usage": null}'

    def _chunk(self, delta: DeltaMessage, finish_reason: str | None = None, usage: Usage | None = None,
               choices: bool = True) -> bytes:
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, usage=usage,
            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)] if choices else [],
        )
        return event(chunk.model_dump_json())

    def role(self) -> bytes:
        return self._chunk(DeltaMessage(role="assistant", content=""))

    def content(self, text: str) -> bytes:
        return event(self._prefix + json.dumps(text, ensure_ascii=False) + self._suffix)

    def finish(self, reason: str) -> bytes:
        return self._chunk(DeltaMessage(), finish_reason=reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      total_tokens=prompt_tokens + completion_tokens)
        return self._chunk(DeltaMessage(), usage=usage, choices=False)
