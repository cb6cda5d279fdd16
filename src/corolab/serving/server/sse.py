"""Server-sent events for ``chat.completion.chunk`` objects, ending with ``data: [DONE]``.

Content chunks are the hot path (one per token), so they are built from a per-request template around
``json.dumps`` of the new text instead of a full model dump; a test checks that the result parses as the
same :class:`~corolab.serving.protocol.ChatCompletionChunk` the model would produce.
"""

from __future__ import annotations

import json

from corolab.serving.protocol import ChatCompletionChunk, ChunkChoice, DeltaMessage, Usage

DONE = b"data: [DONE]\n\n"


def event(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


class ChunkWriter:
    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.id, self.created, self.model = completion_id, created, model
        head = json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model})
        self._prefix = head[:-1] + ', "choices": [{"index": 0, "delta": {"content": '
        self._suffix = '}, "finish_reason": null, "logprobs": null}], "usage": null}'

    def _chunk_model(self, delta: DeltaMessage, finish_reason: str | None = None, usage: Usage | None = None,
                     choices: bool = True) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, usage=usage,
            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)] if choices else [],
        )

    def _chunk(self, delta: DeltaMessage, finish_reason: str | None = None, usage: Usage | None = None,
               choices: bool = True) -> bytes:
        return event(self._chunk_model(delta, finish_reason, usage, choices).model_dump_json())

    def role(self) -> bytes:
        return self._chunk(DeltaMessage(role="assistant", content=""))

    def content(self, text: str) -> bytes:
        return event(self._prefix + json.dumps(text, ensure_ascii=False) + self._suffix)

    def finish(self, reason: str) -> bytes:
        """The last chunk with a choice: an empty delta (``{}``, as OpenAI sends it) and the finish reason."""
        chunk = self._chunk_model(DeltaMessage(), finish_reason=reason).model_dump(mode="json")
        chunk["choices"][0]["delta"] = {}
        return event(json.dumps(chunk))

    def usage(self, usage: Usage) -> bytes:
        return self._chunk(DeltaMessage(), usage=usage, choices=False)
