"""A Hugging Face fast tokenizer's own streaming detokenizer, behind the engine's ``Detokenizer`` shape."""

from __future__ import annotations


class StreamDecoder:
    """Incremental detokenizing by ``tokenizers.decoders.DecodeStream``: the library keeps the window of
    recent ids and holds back an incomplete UTF-8 character, as :mod:`corolab.serving.engine.detok` does by hand."""

    def __init__(self, tokenizer) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)

    def push(self, token: int) -> str:
        return self._stream.step(self._tokenizer, token) or ""


__all__ = ["StreamDecoder"]
