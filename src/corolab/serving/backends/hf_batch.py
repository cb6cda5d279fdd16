"""A batch of a Hugging Face model's sequences: one left-padded KV cache, and one record per row.

Its jobs: padding joining prompts together, reusing the shared opening of prompts
(:mod:`corolab.serving.backends.prefix`), prefilling a long prompt in chunks, and joining and compacting
rows of the cache (:mod:`corolab.serving.backends.kvcache`). It runs the model through the one forward it is
given (:class:`BatchModel`), so it does not know which forward that is (a model's own or the CPU path's).

Imported when a model's first batch is made, never at start-up, so torch is imported at the top here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from corolab.serving.backends.base import Batch, Outcome, PrefillChunk
from corolab.serving.backends.kvcache import (close_holes, empty_cache, ensure_room, has_room, merge_rows,
                                              place_rows, room_for_rows, select_rows)
from corolab.serving.backends.prefix import PrefixStore
from corolab.serving.backends.sampling import RowSampler, sample
from corolab.serving.params import SamplingParams


class BatchModel(Protocol):
    """What a batch needs of its backend (:class:`corolab.serving.backends.hf.HFBackend`)."""

    model: torch.nn.Module
    device: str
    pad_token_id: int
    prefixes: PrefixStore | None

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor: ...


@dataclass(eq=False)
class Row:
    """One row of the batch's cache: whose it is, how it samples, what it feeds next, how long it may run."""

    key: int                 # the engine's request id
    sampler: RowSampler
    last: int                # the token it feeds to the next step
    left: int                # how many more tokens it may generate (the cache columns it may still need)
    gone: bool = False       # left the batch; its cache row is dropped before the next forward pass


class HFBatch(Batch):
    """Rows of one left-padded KV cache (see :mod:`corolab.serving.backends.kvcache`).

    Joining requests are prefilled together in one padded forward pass (``add_many``), then merged into
    the running cache. A prompt longer than one step's prefill budget arrives in chunks (``prefill``): its
    row's cache grows chunk by chunk beside the batch and joins it with the last chunk. Each step feeds every
    row its last token with that row's own position id, so a row that joined late (shorter, more left
    padding) computes exactly what it would compute alone (in float32; see
    :func:`~corolab.serving.backends.placement.pick_dtype` for bf16).

    Each cache row has one :class:`Row` record, in cache order, so what a row holds cannot drift apart.
    """

    def __init__(self, model: BatchModel) -> None:
        super().__init__()
        self._b = model
        self._rows: list[Row] = []  # one per cache row, in the cache's order
        self._cache = None
        self._mask = None
        self._pending: dict[int, object] = {}  # key -> the cache of a prompt still arriving in chunks

    def __len__(self) -> int:
        return sum(not row.gone for row in self._rows)

    def add_many(self, items: Sequence[tuple[int, Sequence[int], SamplingParams]]) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        items, samplers = self._samplers_for(items, outcomes)
        if not items:
            return outcomes
        self._compact()
        model, device = self._b.model, self._b.device
        prompts = [list(prompt) for _, prompt, _ in items]
        # The opening every prompt shares (chat template, system prompt) is not prefilled again: its keys and
        # values come from the prefix store, and the forward pass below runs on the rest of each prompt.
        shared, prefix_kv = self._b.prefixes.lookup(prompts) if self._b.prefixes else (0, [])
        width = max(len(prompt) - shared for prompt in prompts)
        ids = torch.full((len(items), width), self._b.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            rest = prompt[shared:]
            ids[row, width - len(rest):] = torch.tensor(rest, dtype=torch.long)
            mask[row, width - len(rest):] = 1
        ids, mask = ids.to(device), mask.to(device)
        row_cache = empty_cache(model.config.num_hidden_layers)
        if shared:  # cache columns: [shared prefix][left padding][rest of the prompt]; the mask hides the padding
            for layer, (keys, values) in zip(row_cache.layers, prefix_kv):
                layer.set(keys.expand(len(items), -1, -1, -1), values.expand(len(items), -1, -1, -1),
                          spare=width + 64)
            mask = torch.cat([mask.new_ones((len(items), shared)), mask], dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, shared:]
        with torch.inference_mode():
            logits = self._b.forward(ids, mask, positions, row_cache)
        tokens = sample(logits.float(), samplers)
        if shared:
            row_cache, mask = close_holes(row_cache, mask)
        self._join([key for key, _, _ in items], samplers, tokens, row_cache, mask,
                   [params.max_tokens for _, _, params in items])
        outcomes.update({key: token for (key, _, _), token in zip(items, tokens)})
        return outcomes

    def prefill(self, chunks: Sequence[PrefillChunk]) -> dict[int, Outcome]:
        """Whole prompts go together through :meth:`add_many`; a prompt in chunks extends its own cache."""
        whole = [(c.key, c.prompt, c.params) for c in chunks if c.start == 0 and c.last]
        outcomes = self.add_many(whole) if whole else {}
        for chunk in chunks:
            if chunk.start == 0 and chunk.last:
                continue
            try:
                token = self._prefill_chunk(chunk)
            except Exception as exc:  # this prompt fails alone; the batch goes on
                self._pending.pop(chunk.key, None)
                outcomes[chunk.key] = exc
                continue
            if token is not None:
                outcomes[chunk.key] = token
        return outcomes

    def _prefill_chunk(self, chunk: PrefillChunk) -> int | None:
        """Run ``prompt[start:end]`` on the sequence's own cache (batch of one, no padding); at the last
        chunk sample the first token and move the row into the batch."""
        if chunk.start == 0:
            self._pending[chunk.key] = empty_cache(self._b.model.config.num_hidden_layers)
        cache = self._pending[chunk.key]
        if chunk.start:  # room for the rest of the prompt at once: growing by doubling could take twice the prompt
            ensure_room(cache, chunk.end - chunk.start, spare=len(chunk.prompt) - chunk.start)
        device = self._b.device
        ids = torch.tensor([list(chunk.prompt[chunk.start:chunk.end])], dtype=torch.long, device=device)
        mask = torch.ones((1, chunk.end), dtype=torch.long, device=device)
        positions = torch.arange(chunk.start, chunk.end, device=device).unsqueeze(0)
        sampler = RowSampler(chunk.params, device) if chunk.last else None  # refuse a bad seed before the work
        with torch.inference_mode():
            logits = self._b.forward(ids, mask, positions, cache)
        if sampler is None:
            return None
        del self._pending[chunk.key]
        self._compact()
        token = sample(logits.float(), [sampler])[0]
        self._join([chunk.key], [sampler], [token], cache, mask, [chunk.params.max_tokens])
        return token

    def _samplers_for(self, items, outcomes: dict[int, Outcome]):
        """Each row's sampler; a row whose settings its sampler refuses fails here, alone."""
        kept, samplers = [], []
        for item in items:
            try:
                samplers.append(RowSampler(item[2], self._b.device))
            except Exception as exc:
                outcomes[item[0]] = exc
                continue
            kept.append(item)
        return kept, samplers

    def _join(self, keys: list[int], samplers: list[RowSampler], tokens: list[int], row_cache, mask,
              max_tokens: list[int]) -> None:
        # the first token is out (it came from the prefill), so each row may generate max_tokens - 1 more
        rows = [Row(key, sampler, token, max(n - 1, 0))
                for key, sampler, token, n in zip(keys, samplers, tokens, max_tokens)]
        if self._cache is not None and room_for_rows(self._cache, len(rows), mask.shape[1]):
            # Into rows of the buffer that leaving rows freed: only the joining rows are copied.
            self._mask = place_rows(self._cache, self._mask, row_cache, mask)
            self._rows.extend(rows)
            return
        width = max(mask.shape[1], 0 if self._mask is None else self._mask.shape[1])
        real = [*([] if self._mask is None else self._mask.sum(dim=1).tolist()), *mask.sum(dim=1).tolist()]
        self._cache, self._mask = merge_rows(self._cache, self._mask, row_cache, mask,
                                             spare=_spare(width, real, [row.left for row in [*self._rows, *rows]]))
        self._rows.extend(rows)

    def step(self) -> dict[int, int]:
        if not len(self):
            return {}
        self._compact()
        rows = self._rows
        if not has_room(self._cache, 1):
            self._relayout()
        ids = torch.tensor([row.last for row in rows], device=self._b.device).unsqueeze(1)
        positions = self._mask.sum(dim=1, keepdim=True)  # real tokens so far = the new token's position
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        with torch.inference_mode():
            logits = self._b.forward(ids, self._mask, positions, self._cache)
        tokens = sample(logits.float(), [row.sampler for row in rows])
        for row, token in zip(rows, tokens):
            row.last = token
            row.left = max(row.left - 1, 0)
        return {row.key: token for row, token in zip(rows, tokens)}

    def remove(self, key: int) -> None:
        """Forget a row now; its cache row is dropped before the next forward pass, together with every
        other row that left meanwhile (:meth:`_compact`)."""
        self._pending.pop(key, None)
        row = next((row for row in self._rows if row.key == key and not row.gone), None)
        if row is None:
            return
        row.gone = True
        if not len(self):
            self._rows = []
            self._cache = self._mask = None

    def _compact(self) -> None:
        """Drop the rows that left: each hole takes the last row still running (one row copied per hole, in
        every layer), and the buffer keeps the freed rows for rows that join (:meth:`_join`). A new, smaller
        buffer gives the memory back (:meth:`_relayout`) when fewer than half of its rows remain, or when it
        is wider than the running rows may use (the widest row left): so it never holds more columns than the
        scheduler counts (``--kv-cache-gib``)."""
        gone = sum(row.gone for row in self._rows)
        if not gone:
            return
        live = len(self._rows) - gone
        holes = [index for index in range(live) if self._rows[index].gone]
        movers = [index for index in range(live, len(self._rows)) if not self._rows[index].gone]
        for target, source in zip(holes, movers):
            for layer in self._cache.layers:
                layer.move_row(source, target)
            self._rows[target] = self._rows[source]
        if holes:
            self._mask[holes] = self._mask[movers]
        for layer in self._cache.layers:
            layer.drop_rows(len(self._rows) - live)
        self._rows, self._mask = self._rows[:live], self._mask[:live]
        buffer = self._cache.layers[0]._k.shape
        if 2 * live < buffer[0] or buffer[-2] > _end(self._mask.sum(dim=1).tolist(), [row.left for row in self._rows]):
            self._relayout()

    def _relayout(self) -> None:
        """A new buffer for the running rows: the columns that are padding in every row dropped, room ahead for
        what the rows may still generate (:func:`_spare`), and no free rows. Run when a step finds no room
        for its column (about once per reply length in a busy batch, not every step) and when the buffer has
        more than twice the rows in use."""
        real = self._mask.sum(dim=1)
        width = int(real.max())  # select_rows drops the columns that are padding in every row
        self._cache, self._mask = select_rows(self._cache, self._mask, list(range(len(self._rows))),
                                              spare=_spare(width, real.tolist(), [row.left for row in self._rows]))


def _end(real: list[int], left: list[int]) -> int:
    """The columns right-aligned rows may use: the widest ``real + left``, plus the one being written."""
    return max((r + n for r, n in zip(real, left)), default=0) + 1


def _spare(width: int, real: list[int], left: list[int]) -> int:
    """Cache columns to allocate ahead of ``width``: as many as doubling would, but no more than the rows can
    use. Rows are right-aligned, so a row that has ``real`` tokens and may generate ``left`` more never needs a
    column past ``real + left``, and the widest row's leaving trims the columns only it used. A batch's buffer
    is thus at most rows x max(prompt + max_tokens) columns: the bound the scheduler admits by
    (:attr:`~corolab.serving.config.ServeConfig.kv_cache_gib`). Before this cap, a short row joining a long one
    got the long row's width plus its own reply as spare: up to twice the columns."""
    return min(max(64, width), max(_end(real, left) - width, 1))


__all__ = ["BatchModel", "HFBatch", "Row"]
