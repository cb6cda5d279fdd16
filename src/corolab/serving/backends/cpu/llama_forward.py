"""One forward pass of a Llama-shaped model with little Python around the matmuls.

Why not ``model(...)``. At one stream an int8 decode step of SmolLM2-135M spends about 7 ms in its 211 matmuls
and, through transformers' general forward (mask builders, attention dispatch, rotary module, output
dataclasses), another 8 ms in some 10,000 small torch calls. This module runs the same weights, the same
modules' parameters, through about a tenth of those calls; ``benchmarks/bench_quantize.py`` measures both.
It serves models whose layers are Llama's (Llama, SmolLM, Mistral without sliding windows, Qwen2 without
bias); :func:`supports` says which. For any other, :func:`corolab.serving.backends.cpu.faster_forward` says
why not and the backend runs ``model(...)``.

The KV cache is :mod:`corolab.serving.backends.kvcache`'s (rows left-padded, a 2-D mask of real tokens), so nothing
else changes: the same ``HFBatch`` joins and drops rows.

Why attention runs row by row. A batched attention kernel sums each row's scores and values in vector lanes
and blocks that start at column 0, so a row's left padding shifts its real keys into other lanes and the
rounding changes: by one unit in the last place, enough to flip an int8 rounding downstream and, tens of
tokens later, a greedy choice. Each row here attends over exactly its own real keys, the same tensor it would
have alone, so with int8 linears (exact integer sums, per-token scales) a reply is bit-for-bit the same
alone or in any batch. The loop has a price: at 32 rows a decode step takes about 1.4x as long as with one
batched call (``benchmarks/bench_quantize.py``), so ``--attention batched`` offers that call, opt-in, for
when speed matters more than the same reply in every batch.

With the fused kernels (:mod:`corolab.serving.backends.cpu.kernels`, int8 models on a CPU), each RMSNorm runs inside the
int8 call that follows it, and a decode step's attention is one call per layer: the same row-by-row rule, in
C++, with every sum in a fixed order. Where o_proj and down_proj have no bias (Llama's and SmolLM's), the
whole decode step's layers are one call (``decode_layers``: the same kernels in the loop's order). The Python
code below stays the reference and the fallback.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corolab.serving.backends.cpu.quantize import QUANTIZED, FusedPart, Int4Linear

# Prefill attention pads its keys and queries to blocks of this many: a multiple of every vector width and of
# SDPA's query blocks below 768 queries, so no sum has a tail and no query a block that depend on the prompt.
_BLOCK = 64


def supports(model: torch.nn.Module) -> bool:
    """Llama's layer shape, a RoPE whose frequencies are fixed at load (not "dynamic" scaling, which changes
    them with the sequence's length), no sliding window, a SiLU MLP. Biases are fine: the layers are called as
    modules."""
    config = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if config is None or inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return False
    if getattr(config, "model_type", "") not in ("llama", "mistral", "qwen2"):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    if getattr(config, "hidden_act", "silu") != "silu":
        return False
    scaling = getattr(config, "rope_scaling", None) or {}
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", "linear", "llama3"):
        return False
    return hasattr(inner.rotary_emb, "inv_freq")


class LlamaForward:
    """Callable: ``(ids, mask, positions, cache) -> logits of each row's last position``."""

    def __init__(self, model: torch.nn.Module, exact: bool = True, kernels=None,
                 kv_dtype: torch.dtype | None = None) -> None:
        """``kernels``: :func:`corolab.serving.backends.cpu.kernels.ops`, for int8 models; ``None`` runs every op from
        Python. ``kv_dtype``: what the KV cache stores (``None``: the model's dtype); keys and values are rounded
        to it as they are written, and every attention reads them widened back, so a token's keys are the same
        whether the step that wrote them also reads them or a later one does."""
        config = model.config
        self.exact = exact
        self.kernels = kernels if kernels is not None and _fusable(model) else None
        self.kv_dtype = kv_dtype
        inner = model.model
        self.embed = inner.embed_tokens
        self.layers = list(inner.layers)
        self.norm = inner.norm
        self.lm_head = model.lm_head
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.inv_freq = inner.rotary_emb.inv_freq.float()
        self.rope_scale = float(getattr(inner.rotary_emb, "attention_scaling", 1.0))
        self.intermediate = self.layers[0].mlp.down_proj.in_features
        # Every layer's weights for the kernels' decode_layers, one flat list (its LayerWeight order), when the
        # whole decode step can be that one call: o_proj and down_proj without bias.
        self.decode_weights = _decode_weights(self.layers) if self.kernels is not None else None

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # [B, S, d/2], float32 as in transformers
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]   # [B, 1, S, d]
        return (angles.cos() * self.rope_scale).to(dtype), (angles.sin() * self.rope_scale).to(dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _plan(self, mask: torch.Tensor, queries: int):
        return self._rows_plan(mask, queries) if self.exact else self._batch_mask(mask, queries)

    @staticmethod
    def _batch_mask(mask: torch.Tensor, queries: int) -> torch.Tensor:
        """``--attention batched``: one boolean [B, 1, S, T] mask, a query sees real tokens up to itself. Every
        query also sees itself, so a padding position (which no real token ever reads) is not NaN."""
        real = mask.bool()[:, None, None, :]
        if queries == 1:
            return real
        keys = mask.shape[1]
        rows = torch.arange(keys - queries, keys, device=mask.device)[:, None]
        cols = torch.arange(keys, device=mask.device)[None, :]
        return (real & (cols <= rows)) | (cols == rows)

    @staticmethod
    def _rows_plan(mask: torch.Tensor, queries: int) -> list:
        """Per row, what its attention reads. Decoding (one query): the row's real keys are its last ``n``
        columns (:func:`corolab.serving.backends.kvcache.close_holes` keeps them contiguous), so a view. Prefilling:
        the indices of its real key columns (a shared prefix and the new tokens may have padding between
        them), its number of real new tokens, and the causal mask between the two."""
        lengths = mask.sum(dim=1).tolist()
        if queries == 1:
            return lengths
        plans = []
        new_real = mask[:, -queries:].sum(dim=1).tolist()
        for row, (total, fresh) in enumerate(zip(lengths, new_real)):
            columns = mask[row].nonzero().squeeze(1)
            causal = (torch.arange(total, device=mask.device)[None, :]
                      <= torch.arange(total - fresh, total, device=mask.device)[:, None])
            plans.append((columns, fresh, causal))
        return plans

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, plan) -> torch.Tensor:
        """Attention row by row over each row's own real keys (see the module's docstring for why), or, with
        ``--attention batched``, one call for the whole batch under a padding mask."""
        gqa = self.kv_heads != self.heads
        if not self.exact:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=plan, enable_gqa=gqa)
        if q.shape[2] == 1:
            width = keys.shape[2]
            # Four-dimensional slices, not unbind()'s 3-D views: with three dimensions SDPA takes its slow math
            # path (measured 4x slower here, torch 2.13).
            return torch.cat([
                F.scaled_dot_product_attention(q[row:row + 1], keys[row:row + 1, :, width - n:],
                                               values[row:row + 1, :, width - n:], enable_gqa=gqa)
                for row, n in enumerate(plan)])
        out = q.new_zeros(q.shape)  # padding queries: never read by a real token
        # Rows with as many keys and as many new tokens share one call: their shapes and causal masks are the
        # same, and SDPA computes each batch element on its own, so every row's numbers are what a call of its
        # own gives (tests/test_engines.py: a reply alone and in a batch). A burst of 128 prompts made 128 calls
        # per layer, each with its pads and copies, about a third of the prefill.
        groups: dict[tuple[int, int], list[int]] = {}
        for row, (columns, fresh, _) in enumerate(plan):
            if fresh:
                groups.setdefault((len(columns), fresh), []).append(row)
        for (total, fresh), rows in groups.items():
            # Keys and queries padded to whole blocks (the padding keys masked out, the padding queries
            # discarded): a query then gets the same sums whether the prompt is prefilled whole, after a reused
            # prefix or in chunks. Unpadded, SDPA sums 24 keys with a scalar tail and 54 in whole vectors, and
            # splits 25 queries into other blocks than 190, and the rounding differs
            # (tests/test_prefix.py, tests/test_engines.py: the chunked and the reused prompt).
            pad, extra = -total % _BLOCK, -fresh % _BLOCK
            index = torch.tensor(rows, device=q.device)
            columns = torch.stack([plan[row][0] for row in rows])[:, None, :, None]
            columns = columns.expand(-1, keys.shape[1], -1, keys.shape[3])
            queries = F.pad(q[index][:, :, -fresh:], (0, 0, extra, 0))
            mask = F.pad(F.pad(plan[rows[0]][2], (0, pad), value=False), (0, 0, extra, 0), value=True)
            out[index, :, -fresh:] = F.scaled_dot_product_attention(
                queries, F.pad(keys[index].gather(2, columns), (0, 0, 0, pad)),
                F.pad(values[index].gather(2, columns), (0, 0, 0, pad)),
                attn_mask=mask, enable_gqa=gqa)[:, :, extra:]
        return out

    def _linear(self, layer: torch.nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual + layer(x)``; an int8 layer in one fused call when the kernels are loaded."""
        if self.kernels is not None and isinstance(layer, QUANTIZED):
            return self.kernels.int8_linear(x, *_weights(layer), residual)
        return layer(x) if residual is None else residual + layer(x)

    def _normed(self, h: torch.Tensor, norm: torch.nn.Module, first: torch.nn.Module,
                *rest: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        """The outputs of layers that read the same normalized input (q, k, v; gate, up). With the kernels the
        norm runs inside the fused layers' one int8 call; without, ``F.rms_norm`` first, then each layer."""
        if self.kernels is not None:  # _fusable: these layers are one FusedInt8
            group = first.group[0]
            return self.kernels.int8_linear(h, *_weights(group.linear), None, norm.weight, self.eps).split(
                group.sizes, dim=-1)
        x = F.rms_norm(h, (h.shape[-1],), norm.weight, self.eps)
        if isinstance(first, FusedPart):
            return first.group[0].compute(x)
        return (first(x), *(layer(x) for layer in rest))

    def _attention_block(self, h, layer, layer_cache, cos, sin, plan) -> torch.Tensor:
        """``h + o_proj(attention(norm(h)))``, op by op."""
        batch, queries = h.shape[:2]
        attn = layer.self_attn
        q, k, v = self._normed(h, layer.input_layernorm, attn.q_proj, attn.k_proj, attn.v_proj)
        q = self._rotate(q.view(batch, queries, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = self._rotate(k.view(batch, queries, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = v.view(batch, queries, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.kv_dtype is not None and self.kv_dtype != k.dtype:
            keys, values = layer_cache.update(k.to(self.kv_dtype), v.to(self.kv_dtype))
            keys, values = keys.to(q.dtype), values.to(q.dtype)
        else:
            keys, values = layer_cache.update(k, v)
        out = self._attend(q, keys, values, plan)
        return self._linear(attn.o_proj, out.transpose(1, 2).reshape(batch, queries, -1), residual=h)

    def _attention_block_fused(self, h, layer, layer_cache, cos, sin, lengths) -> torch.Tensor:
        """The same for one decoding query per row, in three kernel calls: norm and q/k/v projection; rotary
        embedding, cache write and attention; o_proj and the residual."""
        attn = layer.self_attn
        qkv = self.kernels.int8_linear(h, *_weights(attn.q_proj.group[0].linear), None,
                                       layer.input_layernorm.weight, self.eps)
        keys, values, start = layer_cache.room(1)
        out = self.kernels.attend_decode(qkv, cos, sin, keys, values, start, lengths, self.heads, self.kv_heads)
        layer_cache.advance(1)
        return self.kernels.int8_linear(out.view(h.shape[0], 1, -1), *_weights(attn.o_proj), h)

    def _decode_layers(self, h, cos, sin, lengths, cache) -> torch.Tensor:
        """A decode step through every layer in one kernel call (``decode_layers``): the loop below, with the
        same kernels in the same order, without its Python."""
        rooms = [layer_cache.room(1) for layer_cache in cache.layers]
        start = rooms[0][2]
        assert all(room[2] == start for room in rooms), "every layer's cache holds as many columns"
        h = self.kernels.decode_layers(h, cos, sin, self.decode_weights, [room[0] for room in rooms],
                                       [room[1] for room in rooms], start, lengths, self.heads, self.kv_heads,
                                       self.intermediate, self.eps)
        for layer_cache in cache.layers:
            layer_cache.advance(1)
        return h

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        batch, queries = ids.shape
        h = self.embed(ids)
        cos, sin = self._rope(positions, h.dtype)
        if self.kernels is not None and queries == 1 and all(
                getattr(layer, "_k", None) is not None for layer in cache.layers):
            plan, block = mask.sum(dim=1), self._attention_block_fused  # each row's real key count
            if self.decode_weights is not None:
                h = self._decode_layers(h, cos, sin, plan, cache)
                return self.kernels.int8_linear(h[:, -1], *_weights(self.lm_head), None, self.norm.weight, self.eps)
        else:
            plan, block = self._plan(mask, queries), self._attention_block
        for layer, layer_cache in zip(self.layers, cache.layers):
            h = block(h, layer, layer_cache, cos, sin, plan)
            gate, up = self._normed(h, layer.post_attention_layernorm, layer.mlp.gate_proj, layer.mlp.up_proj)
            h = self._linear(layer.mlp.down_proj, F.silu(gate) * up, residual=h)
        if self.kernels is not None:
            return self.kernels.int8_linear(h[:, -1], *_weights(self.lm_head), None, self.norm.weight, self.eps)
        last = F.rms_norm(h[:, -1], (h.shape[-1],), self.norm.weight, self.eps)
        return self._linear(self.lm_head, last)


def _weights(layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What ``int8_linear`` takes after its input (an int8 or a 4-bit layer): weight, scales, weight sums, bias."""
    return layer.kernel_args()


def _decode_weights(layers: list) -> list[torch.Tensor] | None:
    """Each layer's norms and int8 weights in ``decode_layers``' order (kernels.cpp's ``LayerWeight``), or
    ``None`` when a layer's o_proj or down_proj has a bias (the loop then runs; Llama's and SmolLM's have none)."""
    flat: list[torch.Tensor] = []
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv, gate_up = attn.q_proj.group[0].linear, mlp.gate_proj.group[0].linear
        if attn.o_proj.bias is not None or mlp.down_proj.bias is not None:
            return None
        if gate_up.out_features != 2 * mlp.down_proj.in_features:
            return None  # not gate and up of the MLP's width, side by side
        for part in (layer.input_layernorm.weight, *_weights(qkv)[:3], *_weights(attn.o_proj)[:3],
                     layer.post_attention_layernorm.weight, *_weights(gate_up)[:3], *_weights(mlp.down_proj)[:3]):
            flat.append(part)
    return flat


def _fusable(model: torch.nn.Module) -> bool:
    """The kernels' path needs what :func:`corolab.serving.backends.cpu.quantize.quantize_linears` makes of a Llama-shaped
    float32 model: q/k/v and gate/up each fused into one int8 layer without bias (the norm before them runs
    inside that call), int8 o_proj, down_proj and LM head."""
    if not isinstance(getattr(model, "lm_head", None), QUANTIZED):
        return False
    if any(isinstance(m, Int4Linear) and not m.on_kernels for m in model.modules()):
        return False  # 4-bit layers left to their Python forward (no VNNI here)
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        fused = (attn.q_proj, mlp.gate_proj)
        if not (all(isinstance(part, FusedPart) and part.group[0].linear.bias is None for part in fused)
                and isinstance(attn.o_proj, QUANTIZED) and isinstance(mlp.down_proj, QUANTIZED)):
            return False
    return True
