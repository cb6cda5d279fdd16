"""The input embedding in fewer bytes, with the same values: a lookup table kept as int8 codes and a scale per
group of 32, or as bfloat16, wherever that form gives back every float32 value exactly.

Why. Once the LM head is an int8 layer of its own, the float32 input embedding is the largest tensor left: 108
of the embedded model's 199 MiB of weights. That model comes from a GGUF file whose embedding is Q8_0 (int8
codes, one float16 scale per 32), so its float32 table holds only 8 bits of information a value; a model from a
bfloat16 checkpoint holds 16. Storing that form instead saves the memory and changes no number: the check
below compares every value, bit for bit, and where a table fails it the float table stays.
"""

from __future__ import annotations

import torch

GROUP = 32  # values of a row per scale, as in GGUF's Q8_0


class Int8GroupEmbedding(torch.nn.Module):
    """An embedding lookup over int8 codes with a float32 scale for each group of :data:`GROUP` values of a row.

    A looked-up row is ``code * scale`` in float32: an int8 code times a float16 scale fits float32's 24-bit
    mantissa, so the product is the exact value the GGUF conversion wrote."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("codes", codes)    # [vocab, dim] int8
        self.register_buffer("scales", scales)  # [vocab, dim / GROUP] float32
        self.num_embeddings, self.embedding_dim = codes.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        codes = self.codes[ids].float()
        return codes.view(*codes.shape[:-1], -1, GROUP).mul_(self.scales[ids][..., None]).flatten(-2)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 codes with a scale per {GROUP}"


class NarrowEmbedding(torch.nn.Module):
    """An embedding lookup over a table stored in a narrower float dtype, widened row by row as it is read."""

    def __init__(self, table: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.dtype = dtype
        self.num_embeddings, self.embedding_dim = table.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids].to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, stored as {self.table.dtype}, read as {self.dtype}"


def int8_groups(table: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``table``'s int8 codes and per-group scales when every group is ``code * scale`` exactly, else ``None``.

    In Q8_0 a group's largest code is 127 (its largest value set the scale), so that value over 127 is the
    scale; every value over the scale must then be an integer in int8's range, and the product must give the
    value back bit for bit. ``chunk`` rows at a time, so the check's temporaries stay a few MiB."""
    rows, dim = table.shape
    if table.dtype != torch.float32 or dim % GROUP:
        return None
    codes = torch.empty(rows, dim, dtype=torch.int8, device=table.device)
    scales = torch.empty(rows, dim // GROUP, dtype=torch.float32, device=table.device)
    for start in range(0, rows, chunk):
        groups = table[start:start + chunk].reshape(-1, dim // GROUP, GROUP)
        scale = groups.abs().amax(dim=2) / 127.0
        found = (groups / torch.where(scale > 0, scale, 1.0)[..., None]).round_()
        if found.abs().max() > 127 or not torch.equal(found * scale[..., None], groups):
            return None
        codes[start:start + chunk] = found.view(-1, dim).to(torch.int8)
        scales[start:start + chunk] = scale
    return codes, scales


def compact_embedding(embedding: torch.nn.Module) -> torch.nn.Module:
    """The smallest exact stand-in for ``embedding`` (an ``nn.Embedding``): :class:`Int8GroupEmbedding`, then
    :class:`NarrowEmbedding` in bfloat16 or float16; ``embedding`` itself where neither holds its values."""
    if not isinstance(embedding, torch.nn.Embedding):
        return embedding
    table = embedding.weight.detach()
    if table.dtype != torch.float32 or embedding.max_norm is not None:
        return embedding
    found = int8_groups(table)
    if found is not None:
        return Int8GroupEmbedding(*found)
    for narrow in (torch.bfloat16, torch.float16):
        stored = table.to(narrow)
        if torch.equal(stored.float(), table):
            return NarrowEmbedding(stored, table.dtype)
    return embedding


def compact_input_embedding(model: torch.nn.Module) -> None:
    """Swap a Hugging Face model's input embedding for :func:`compact_embedding`'s, unless the LM head still
    shares its table (a tied, unquantized model: the head's matmul needs the float table, so nothing is saved)."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if getattr(head, "weight", None) is getattr(embedding, "weight", False):
        return
    compact = compact_embedding(embedding)
    if compact is not embedding:
        model.set_input_embeddings(compact)
