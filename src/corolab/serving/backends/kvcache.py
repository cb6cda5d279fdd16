"""A KV cache for continuous batching: rows join and leave between decode steps.

transformers' ``DynamicLayer`` appends each step's keys with ``torch.cat``, copying the whole cache every
step. Here each layer keeps a buffer with spare room, so a step writes one column in place. The batch says
how much room (:class:`corolab.serving.backends.hf_batch.HFBatch`): as much as doubling would give, but never
past the widest row's prompt plus reply limit, the bound the scheduler admits by (``--kv-cache-gib``).
Doubling alone left up to half of the cache unused: at 32 rows of 64-token replies it held 254 columns for
126 tokens, 190 MB of the embedded model's resident memory.

Rows are left-padded to a common length; the attention mask hides the padding. A row that leaves has the last
row moved into its place, and a row that joins takes a freed row (``place_rows``); only when no freed
row fits does joining build a new buffer (``merge_rows``, padding the shorter side on the left), and only when
the buffer runs out of columns or holds far more than its rows use does ``select_rows`` copy the rows into a
new one, trimming the columns that are padding for all.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class GrowableLayer(DynamicLayer):
    """One layer's keys and values in a buffer with spare columns; ``keys``/``values`` are views of it.

    The buffer may also hold more rows than are in use (``rows``): a row that leaves has the last row moved
    into its place (:meth:`move_row`, :meth:`drop_rows`), and a row that joins is written into the first free
    one (:meth:`place`). Each copies one row, not the cache: at 128 rows a step where requests left and
    joined copied the whole cache twice, about a fifth of a busy server's model time
    (``benchmarks/RESULTS.md``, "Rows that join and leave in place")."""

    def __init__(self) -> None:
        super().__init__()
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.length = 0
        self.rows = 0

    def set(self, keys: torch.Tensor, values: torch.Tensor, spare: int = 64) -> None:
        b, h, t, d = keys.shape
        self._k = keys.new_empty((b, h, t + spare, d))
        self._v = values.new_empty((b, h, t + spare, d))
        self._k[:, :, :t] = keys
        self._v[:, :, :t] = values
        self.length = t
        self.rows = b
        self._expose()

    def _expose(self) -> None:
        assert self._k is not None and self._v is not None
        self.keys = self._k[: self.rows, :, : self.length]
        self.values = self._v[: self.rows, :, : self.length]
        self.is_initialized = True
        self.device = self._k.device

    def fits(self, columns: int) -> bool:
        """Whether the buffer has ``columns`` more columns free after the ones in use."""
        return self._k is not None and self.length + columns <= self._k.shape[-2]

    def free_rows(self) -> int:
        """Rows of the buffer not in use: room for that many joining rows without a new buffer."""
        return 0 if self._k is None else self._k.shape[0] - self.rows

    def move_row(self, source: int, target: int) -> None:
        """Copy row ``source`` (all its columns in use) over row ``target``."""
        assert self._k is not None and self._v is not None
        self._k[target, :, : self.length] = self._k[source, :, : self.length]
        self._v[target, :, : self.length] = self._v[source, :, : self.length]

    def drop_rows(self, count: int) -> None:
        """Stop using the last ``count`` rows (their memory stays, for rows that join later)."""
        self.rows -= count
        self._expose()

    def place(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write joining rows ([k, heads, t, dim], t <= length) into the first free rows, right-aligned at the
        current column as every row is, with zeros in the columns before them (padding the mask hides; zeros,
        not stale values, because a batched attention multiplies them by a weight of 0)."""
        assert self._k is not None and self._v is not None
        count, t = keys.shape[0], keys.shape[-2]
        assert count <= self.free_rows() and t <= self.length
        rows = slice(self.rows, self.rows + count)
        for buffer, new in ((self._k, keys), (self._v, values)):
            buffer[rows, :, : self.length - t] = 0
            buffer[rows, :, self.length - t : self.length] = new
        self.rows += count
        self._expose()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):  # type: ignore[override]
        if self._k is None:
            self.set(key_states, value_states)
            return self.keys, self.values
        n = key_states.shape[-2]
        keys, values, start = self.room(n)
        keys[:, :, start : start + n] = key_states
        values[:, :, start : start + n] = value_states
        self.advance(n)
        return self.keys, self.values

    def room(self, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The key and value buffers, grown if they lack room for ``n`` more columns, and the column to write at;
        :meth:`advance` then exposes what was written. ``update`` writes through it, and so does a kernel that
        writes in place (:mod:`corolab.serving.backends.cpu.kernels`)."""
        assert self._k is not None and self._v is not None
        if not self.fits(n):
            self.set(self.keys, self.values, spare=max(64, self.length + n))
        return self._k[: self.rows], self._v[: self.rows], self.length

    def advance(self, n: int) -> None:
        self.length += n
        self._expose()

    def get_seq_length(self) -> int:
        return self.length


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """What one token's keys and values take over all of a model's layers: the unit the scheduler counts a
    batch's cache in (``--kv-cache-gib``). The embedded SmolLM2-135M in float32: 30 layers x keys and values x 3
    key-value heads x 64 x 4 bytes = 46,080 bytes."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * heads * head_dim * torch.finfo(dtype).bits // 8


def has_room(cache: DynamicCache, columns: int) -> bool:
    """Whether every layer's buffer has ``columns`` more columns free."""
    return all(layer.fits(columns) for layer in cache.layers)


def ensure_room(cache: DynamicCache, columns: int, spare: int) -> None:
    """Before a step that appends ``columns``: a layer whose buffer is full moves to one with ``spare`` free
    columns (at least ``columns``)."""
    for layer in cache.layers:
        if layer._k is not None and not layer.fits(columns):
            layer.set(layer.keys, layer.values, spare=max(spare, columns))


def empty_cache(num_layers: int) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [GrowableLayer() for _ in range(num_layers)]
    return cache


def left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim -2 (sequence) of a [B, H, T, D] tensor on the left with zeros up to ``width``."""
    missing = width - t.shape[-2]
    if missing <= 0:
        return t
    pad = t.new_zeros((*t.shape[:-2], missing, t.shape[-1]))
    return torch.cat([pad, t], dim=-2)


def room_for_rows(cache: DynamicCache, count: int, columns: int) -> bool:
    """Whether ``count`` rows of ``columns`` columns can join ``cache`` in place (:func:`place_rows`)."""
    return all(layer._k is not None and layer.free_rows() >= count and columns <= layer.length
               for layer in cache.layers)


def place_rows(batch: DynamicCache, batch_mask: torch.Tensor, row: DynamicCache, row_mask: torch.Tensor
               ) -> torch.Tensor:
    """Write ``row``'s cache into ``batch``'s free rows (:func:`room_for_rows` said they fit), right-aligned
    as :func:`merge_rows` would place them, and return the batch's mask with theirs, left-padded, below it.
    Only the joining rows are copied."""
    for layer, new in zip(batch.layers, row.layers):
        layer.place(new.keys, new.values)
    return torch.cat([batch_mask, _pad_mask(row_mask, batch_mask.shape[1])])


def _release(layer: GrowableLayer) -> None:
    """Free a layer that has just been copied into a new cache, before the next layer is copied: the old and
    the new cache then coexist one layer at a time, not whole (at 32 rows of the embedded model, 140 MB less
    at the peak of a join). The price: if a copy fails midway (out of memory), the old cache is lost too, and
    its rows fail at their next step, as they would after any failed step."""
    layer._k = layer._v = None
    layer.keys = layer.values = None
    layer.length = layer.rows = 0


def merge_rows(batch: DynamicCache, batch_mask: torch.Tensor | None, row: DynamicCache, row_mask: torch.Tensor,
               spare: int = 64) -> tuple[DynamicCache, torch.Tensor]:
    """Append ``row``'s cache (one or more rows) to ``batch``'s, left-padding the shorter one. The new buffer
    has room for ``spare`` more columns (the caller knows how many steps its rows may still take). ``batch``
    is used up: each of its layers is freed once copied."""
    if batch_mask is None or batch_mask.shape[0] == 0:
        merged = empty_cache(len(row.layers))
        for src, dst in zip(row.layers, merged.layers):
            dst.set(src.keys, src.values, spare=spare)
        return merged, row_mask
    width = max(batch_mask.shape[1], row_mask.shape[1])
    merged = empty_cache(len(batch.layers))
    for old, new, dst in zip(batch.layers, row.layers, merged.layers):
        dst.set(torch.cat([left_pad(old.keys, width), left_pad(new.keys, width)]),
                torch.cat([left_pad(old.values, width), left_pad(new.values, width)]), spare=spare)
        _release(old)
    mask = torch.cat([_pad_mask(batch_mask, width), _pad_mask(row_mask, width)])
    return merged, mask


def close_holes(cache: DynamicCache, mask: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
    """Move each row's real columns to the right end, in order, padding to the left.

    A join with a shared prefix lays a row out as [prefix][padding][rest of its prompt]; decoding wants one
    contiguous run of real keys per row (:mod:`corolab.serving.backends.cpu.llama_forward` attends over it as a view).
    ``cache`` is used up, as in :func:`merge_rows`, unless it already was in order (then it is returned).
    A stable sort of the mask puts padding (0) before real columns (1) and keeps each group's order."""
    order = torch.sort(mask, dim=1, stable=True).indices
    if torch.equal(order, torch.arange(mask.shape[1], device=mask.device).expand_as(order)):
        return cache, mask
    out = empty_cache(len(cache.layers))
    for src, dst in zip(cache.layers, out.layers):
        index = order[:, None, :, None].expand(-1, src.keys.shape[1], -1, src.keys.shape[3])
        dst.set(src.keys.gather(2, index), src.values.gather(2, index))
        _release(src)
    return out, mask.gather(1, order)


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    if missing <= 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)


def select_rows(cache: DynamicCache, mask: torch.Tensor, keep: list[int], spare: int = 64
                ) -> tuple[DynamicCache, torch.Tensor]:
    """Keep only rows ``keep``; drop leading columns that are padding in every kept row; leave room for
    ``spare`` more columns. ``cache`` is used up, layer by layer, as in :func:`merge_rows`."""
    index = torch.tensor(keep, dtype=torch.long, device=mask.device)
    mask = mask[index]
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    mask = mask[:, start:]
    out = empty_cache(len(cache.layers))
    for src, dst in zip(cache.layers, out.layers):
        dst.set(src.keys[index, :, start:], src.values[index, :, start:], spare=spare)  # (index_select is slow on CPU)
        _release(src)
    return out, mask
