"""The fused C++ kernels (``corolab/serving/backends/cpu/kernels.cpp``).

Two contracts, tested with ``torch.equal``, never a tolerance:
* the int8 layer is the Python layer bit for bit (quantize, integer matmul, dequantize);
* every sum the kernels add (RMSNorm, attention) has one fixed order, so a row's numbers are the same alone,
  in any batch, and with any thread count: a greedy reply does not depend on who else is being served.
Against the Python path (torch's RMSNorm and attention, which sum in other orders) they agree to float32
rounding, checked with a tolerance.
"""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

from corolab.serving.backends.cpu import kernels  # noqa: E402
from corolab.serving.backends.cpu.quantize import Int8Linear, quantize_linears  # noqa: E402
from corolab.serving.params import SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def ops():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler here: the Python path runs instead (tested everywhere else)")
    loaded = kernels.ops()
    assert loaded is not None, "a compiler is here, so the kernels must build (see the message above)"
    return loaded


@pytest.mark.parametrize("rows,width,outputs", [(1, 64, 48), (2, 100, 37), (4, 1536, 50), (7, 96, 80),
                                                (32, 576, 1728), (3, 64, 9000)])
def test_int8_linear_is_the_python_layer_bit_for_bit(ops, rows, width, outputs):
    """Quantize, matmul, dequantize: one call. Up to 4 rows take the VNNI matmul (100 and 1,536 inputs leave a
    part of a 64-byte block; 37 and 50 outputs a part of a 4-row group), more take ``_int_mm``; 9,000
    outputs span several column blocks. One loud row checks that each row keeps its own scale."""
    torch.manual_seed(rows)
    layer = Int8Linear(torch.nn.Linear(width, outputs, bias=False))
    x = torch.randn(rows, 1, width)
    x[0, 0, 3] = 500.0
    assert torch.equal(ops.int8_linear(x, layer.weight_int8, layer.scale, layer.weight_sum), layer(x))
    residual = torch.randn(rows, 1, outputs)
    assert torch.equal(ops.int8_linear(x, layer.weight_int8, layer.scale, layer.weight_sum, None, residual), residual + layer(x))


needs_packed = pytest.mark.skipif(not kernels.packed_layout(), reason="the packed layout is used only on a CPU with "
                                  "AVX512-VNNI and no AMX; elsewhere the plain layout above runs")


@needs_packed
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9, 16, 17, 33, 130])
@pytest.mark.parametrize("width,outputs", [(64, 48), (576, 960), (1536, 576), (100, 64 * 16 + 32)])
def test_a_packed_weight_gives_the_plain_layer_s_numbers_bit_for_bit(ops, rows, width, outputs):
    """Every row count: four blocks of 16 outputs at a time up to four rows (48 and 1,056 outputs leave blocks
    over), eight rows at a time from five (5, 9, 17, 33 and 130 leave rows over); 100 inputs are 25 quads."""
    torch.manual_seed(rows * 7 + width)
    plain = Int8Linear(torch.nn.Linear(width, outputs, bias=True))
    packed = Int8Linear(torch.nn.Linear(width, outputs, bias=True))
    packed.load_state_dict(plain.state_dict())
    packed.pack(ops)
    assert packed.weight_int8.shape == (outputs // 16, width // 4, 16, 4)
    x = torch.randn(rows, 1, width)
    x[0, 0, 3] = 500.0
    expected = plain(x)  # torch._int_mm (or the small VNNI kernel) on the plain weight
    assert torch.equal(packed(x), expected)
    residual = torch.randn(rows, 1, outputs)
    assert torch.equal(ops.int8_linear(x, packed.weight_int8, packed.scale, packed.weight_sum, packed.bias, residual),
                       residual + expected)


def test_pack_int8_lays_out_sixteen_outputs_by_four_inputs(ops):
    weight = torch.arange(32 * 8, dtype=torch.int32).remainder(251).sub(125).to(torch.int8).view(32, 8)
    packed = ops.pack_int8(weight)
    for j, q, c, t in [(0, 0, 0, 0), (1, 1, 5, 3), (0, 1, 15, 2), (1, 0, 9, 1)]:
        assert packed[j, q, c, t] == weight[16 * j + c, 4 * q + t]
    with pytest.raises(RuntimeError, match="multiple of 16"):
        ops.pack_int8(torch.zeros(24, 8, dtype=torch.int8))


def test_int8_linear_adds_the_bias_as_the_layer_does(ops):
    torch.manual_seed(4)
    layer = Int8Linear(torch.nn.Linear(64, 32, bias=True))
    x = torch.randn(5, 64)
    assert torch.equal(ops.int8_linear(x, layer.weight_int8, layer.scale, layer.weight_sum, layer.bias), layer(x))


def test_int8_linear_refuses_what_it_does_not_compute(ops):
    layer = Int8Linear(torch.nn.Linear(64, 32, bias=False))
    with pytest.raises(RuntimeError, match="64 features|features"):
        ops.int8_linear(torch.randn(2, 63), layer.weight_int8, layer.scale, layer.weight_sum)
    with pytest.raises(RuntimeError, match="float32"):
        ops.int8_linear(torch.randn(2, 64, dtype=torch.bfloat16), layer.weight_int8, layer.scale, layer.weight_sum)


def test_the_norm_before_a_layer_is_rmsnorm_and_keeps_each_row_to_itself(ops):
    torch.manual_seed(5)
    layer = Int8Linear(torch.nn.Linear(576, 960, bias=False))
    norm = torch.rand(576) + 0.5
    x = torch.randn(9, 1, 576)
    x[4] *= 300  # a loud neighbour
    together = ops.int8_linear(x, layer.weight_int8, layer.scale, layer.weight_sum, None, None, norm, 1e-5)
    reference = layer(torch.nn.functional.rms_norm(x, (576,), norm, 1e-5))
    assert torch.allclose(together, reference, rtol=1e-3, atol=1e-3 * reference.abs().max().item())
    for row in range(len(x)):
        alone = ops.int8_linear(x[row:row + 1], layer.weight_int8, layer.scale, layer.weight_sum, None, None, norm,
                                1e-5)
        assert torch.equal(alone, together[row:row + 1])


def _attention_inputs(rows: int, filled: int, heads: int = 4, kv_heads: int = 2, d: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * d)
    angles = torch.rand(rows, d // 2) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    keys, values = torch.randn(rows, kv_heads, filled + 3, d), torch.randn(rows, kv_heads, filled + 3, d)
    return qkv, cos, sin, keys, values


@pytest.mark.parametrize("d", [16, 64, 128])  # 64 and 128 take the eight-keys-at-once path on x86 with AVX2
def test_decode_attention_is_sdpa_over_each_rows_own_keys(ops, d):
    """Rotary embedding on q and k, k and v written at the column given, then softmax attention over each row's
    last ``lengths[b]`` keys: torch's SDPA on the same tensors, to rounding."""
    heads, kv_heads, start = 4, 2, 20
    qkv, cos, sin, keys, values = _attention_inputs(3, start + 1, d=d)
    lengths = torch.tensor([21, 9, 1])
    before = keys.clone()
    out = ops.attend_decode(qkv, cos, sin, keys, values, start, lengths, heads, kv_heads)

    def rotate(x):
        return x * cos[:, None] + torch.cat((-x[..., d // 2:], x[..., :d // 2]), -1) * sin[:, None]

    q = rotate(qkv[:, :heads * d].view(3, heads, d))
    k = rotate(qkv[:, heads * d:(heads + kv_heads) * d].view(3, kv_heads, d))
    v = qkv[:, (heads + kv_heads) * d:].view(3, kv_heads, d)
    assert torch.allclose(keys[:, :, start], k, atol=1e-6) and torch.equal(values[:, :, start], v)
    assert torch.equal(keys[:, :, :start], before[:, :, :start])  # nothing else written
    for row, n in enumerate(lengths.tolist()):
        want = torch.nn.functional.scaled_dot_product_attention(
            q[row:row + 1, :, None], keys[row:row + 1, :, start + 1 - n:start + 1],
            values[row:row + 1, :, start + 1 - n:start + 1], enable_gqa=True)
        assert torch.allclose(out[row].view(heads, d), want.view(heads, d), atol=1e-5), row


@pytest.mark.parametrize("d", [16, 64])
def test_decode_attention_is_the_same_alone_in_a_batch_and_on_any_thread_count(ops, d):
    """A row padded into a wider batch (its keys at the right end, as the cache keeps them) gives exactly the
    numbers it gives alone; so do 1 and 2 threads."""
    heads, kv_heads = 4, 2
    qkv, cos, sin, keys, values = _attention_inputs(4, 40, heads, kv_heads, d, seed=1)
    lengths = torch.tensor([40, 7, 23, 1])
    together = ops.attend_decode(qkv, cos, sin, keys.clone(), values.clone(), 39, lengths, heads, kv_heads)
    for row, n in enumerate(lengths.tolist()):
        own_k = keys[row:row + 1, :, 40 - n:].clone()  # alone: just its keys, no padding, other room after them
        own_v = values[row:row + 1, :, 40 - n:].clone()
        alone = ops.attend_decode(qkv[row:row + 1], cos[row:row + 1], sin[row:row + 1], own_k, own_v, n - 1,
                                  torch.tensor([n]), heads, kv_heads)
        assert torch.equal(alone, together[row:row + 1]), row
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.attend_decode(qkv, cos, sin, keys.clone(), values.clone(), 39, lengths, heads, kv_heads)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, together)


@pytest.mark.parametrize("d", [16, 64, 128])
def test_every_key_gets_the_same_score_whichever_path_computes_it(ops, d):
    """Scores come eight keys at a time (d 64 or 128, AVX2) and the rest one by one; both must be dot's sum in
    dot's order, or a key's weight would depend on where it falls. With 13 copies of one key (8 + 5) every
    score equals the maximum, every weight is exp(0) = 1 exactly, and the output is the plain mean of the
    values, summed in order in float32. One score a bit off and the weights are no longer all 1."""
    heads, kv_heads, n = 8, 1, 13
    for seed in range(5):
        qkv, cos, sin, keys, values = _attention_inputs(1, n, heads, kv_heads, d, seed=seed)
        ops.attend_decode(qkv, cos, sin, keys, values, n - 1, torch.tensor([n]), heads, kv_heads)  # key n-1
        keys[:, :, :n] = keys[:, :, n - 1:n].clone()
        out = ops.attend_decode(qkv, cos, sin, keys, values, n - 1, torch.tensor([n]), heads, kv_heads)
        total = torch.zeros(d)
        for t in range(n):
            total = total + values[0, 0, t]
        mean = total * (torch.tensor(1.0) / torch.tensor(float(n)))  # 1.0f / 13.0f, as the kernel
        for h in range(heads):
            assert torch.equal(out[0, h * d:(h + 1) * d], mean), (seed, h)


@pytest.mark.parametrize("d", [16, 64, 128])
def test_a_float16_cache_attends_as_its_values_widened_to_float32(ops, d):
    """A float16 cache is written rounded to nearest even, as ``.to(torch.float16)`` rounds, and read widened
    (exactly): the new column is the float32 one rounded, and where the new key and value need no rounding the
    output is, bit for bit, that of a float32 cache holding the same values."""
    heads, kv_heads, start = 6, 2, 37
    qkv, cos, sin, keys, values = _attention_inputs(3, start + 1, heads, kv_heads, d, seed=3)
    lengths = torch.tensor([38, 17, 1])
    half_k, half_v, wide_k, wide_v = keys.half(), values.half(), keys.clone(), values.clone()
    ops.attend_decode(qkv, cos, sin, half_k, half_v, start, lengths, heads, kv_heads)
    ops.attend_decode(qkv, cos, sin, wide_k, wide_v, start, lengths, heads, kv_heads)
    assert half_k.dtype == torch.float16
    assert torch.equal(half_k[:, :, start], wide_k[:, :, start].half())
    assert torch.equal(half_v[:, :, start], wide_v[:, :, start].half())
    assert not torch.equal(half_k[:, :, start].float(), wide_k[:, :, start])  # (the rounding is there to see)

    exact = qkv.half().float()  # a new key and value float16 holds exactly, not rotated (cos 1, sin 0)
    half_k, half_v = keys.half(), values.half()
    wide_k, wide_v = half_k.float(), half_v.float()
    out_half = ops.attend_decode(exact, torch.ones_like(cos), torch.zeros_like(sin), half_k, half_v, start, lengths,
                                 heads, kv_heads)
    out_wide = ops.attend_decode(exact, torch.ones_like(cos), torch.zeros_like(sin), wide_k, wide_v, start, lengths,
                                 heads, kv_heads)
    assert torch.equal(half_k.float(), wide_k) and torch.equal(half_v.float(), wide_v)
    assert torch.equal(out_half, out_wide)


def test_attention_refuses_a_full_cache_and_a_bad_length(ops):
    """The kernel writes into the cache in place, so it checks the room it was given."""
    qkv, cos, sin, keys, values = _attention_inputs(1, 5)  # room for 8 columns
    with pytest.raises(RuntimeError, match="no room"):
        ops.attend_decode(qkv, cos, sin, keys, values, 8, torch.tensor([1]), 4, 2)
    before = keys.clone(), values.clone()
    with pytest.raises(RuntimeError, match="keys of"):
        ops.attend_decode(qkv, cos, sin, keys, values, 3, torch.tensor([5]), 4, 2)
    assert torch.equal(keys, before[0]) and torch.equal(values, before[1])  # refused before writing


def test_the_kernels_can_be_turned_off(monkeypatch, capsys):
    """``COROLAB_KERNELS=0``: no build, and ``ops()`` says so with ``None`` (the Python path runs)."""
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv("COROLAB_KERNELS", "0")
    monkeypatch.setattr(kernels, "_build", lambda: pytest.fail("built although turned off"))
    assert kernels.ops() is None


def test_a_failed_build_falls_back_with_one_line(monkeypatch, capsys):
    def broken():
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.delenv("COROLAB_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_build", broken)
    assert kernels.ops() is None
    err = capsys.readouterr().err
    assert "fused kernels unavailable (RuntimeError: Ninja is required" in err and "more detail" not in err
    assert "using the Python path" in err


def _quantized_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    quantize_linears(model)
    return model


def _step_side_by_side(forwards: dict, ids: torch.Tensor, steps: int, spare: int, same) -> dict:
    """Run each forward on its own cache: a prefill of ``ids`` (0 is padding), then greedy decode steps, with
    the cache left ``spare`` free columns after the prefill so that a decode step must grow it. ``same(a, b)``
    checks each step's logits; returns the caches."""
    from corolab.serving.backends.kvcache import empty_cache

    mask = (ids != 0).long()
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    caches = {name: empty_cache(2) for name in forwards}
    with torch.inference_mode():
        for step in range(steps):
            got = [forward(ids, mask, positions, caches[name]) for name, forward in forwards.items()]
            assert same(*got), step
            if step == 0:
                for cache in caches.values():
                    for layer in cache.layers:
                        layer.set(layer.keys, layer.values, spare=spare)
            ids = got[0].argmax(-1, keepdim=True)
            positions = mask.sum(dim=1, keepdim=True)
            mask = torch.cat([mask, mask.new_ones((ids.shape[0], 1))], dim=1)
    return caches


@pytest.mark.parametrize("kv_dtype", [None, torch.float16], ids=["float32-cache", "float16-cache"])
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "batched"])
def test_decode_steps_agree_with_the_python_path(ops, exact, kv_dtype):
    """Rows of different lengths (left padding), a cache that must grow mid-run, seven steps: the kernels'
    logits and cache are the Python pass's, to float32 rounding. With a float16 cache both round each key and
    value as they write it, and the kernel's cache holds float16 as the Python path's does."""
    from corolab.serving.backends.cpu.llama_forward import LlamaForward

    model = _quantized_tiny_llama()
    plain = LlamaForward(model, exact=exact, kv_dtype=kv_dtype)
    fused = LlamaForward(model, exact=exact, kernels=ops, kv_dtype=kv_dtype)
    assert fused.kernels is not None and plain.kernels is None
    ids = torch.tensor([[0, 0, 0, 5, 6, 7], [9, 10, 11, 12, 13, 14], [0, 3, 4, 5, 6, 7]])
    caches = _step_side_by_side({"plain": plain, "fused": fused}, ids, steps=7, spare=1,
                                same=lambda a, b: torch.allclose(a, b, atol=1e-3, rtol=1e-3))
    for a, b in zip(caches["plain"].layers, caches["fused"].layers):
        assert a.keys.shape == b.keys.shape
        assert a.keys.dtype == b.keys.dtype == (kv_dtype or torch.float32)
        assert torch.allclose(a.keys.float(), b.keys.float(), atol=1e-3)
        assert torch.allclose(a.values.float(), b.values.float(), atol=1e-3)


@pytest.mark.parametrize("kv_dtype", [None, torch.float16], ids=["float32-cache", "float16-cache"])
def test_one_call_for_all_layers_is_the_layer_loop_bit_for_bit(ops, kv_dtype):
    """``decode_layers`` runs a decode step's layers in one call; the loop over the same kernels, layer by
    layer, must give the same logits and the same cache, to the bit (rows of different lengths, six steps, a
    cache that grows)."""
    from corolab.serving.backends.cpu.llama_forward import LlamaForward

    model = _quantized_tiny_llama()
    one_call = LlamaForward(model, kernels=ops, kv_dtype=kv_dtype)
    loop = LlamaForward(model, kernels=ops, kv_dtype=kv_dtype)
    loop.decode_weights = None
    assert one_call.decode_weights is not None
    ids = torch.tensor([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13], [0, 0, 0, 0, 7]])
    caches = _step_side_by_side({"one_call": one_call, "loop": loop}, ids, steps=6, spare=2, same=torch.equal)
    for a, b in zip(caches["one_call"].layers, caches["loop"].layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.mark.model
def test_the_model_uses_the_kernels_and_agrees_with_the_python_path(smol):
    """On the embedded model in its default mode: teacher-forced through decode steps on the Python path's own
    greedy replies, the kernels pick the same next token at almost every position. Not every: int8 codes
    amplify a last-bit difference in a sum (measured: logits 3-9 % apart; quality the same within noise,
    RESULTS.md), so a near-tie can go the other way."""
    from corolab.serving.backends.kvcache import empty_cache
    from corolab.serving.backends.cpu.llama_forward import LlamaForward

    assert smol.lean is not None and smol.lean.kernels is not None  # the default CPU path uses them
    plain, fused = LlamaForward(smol.model, exact=smol.lean.exact), smol.lean
    layers = smol.model.config.num_hidden_layers

    def decode(lean, prompt, forced=None, steps=24):
        cache, tokens = empty_cache(layers), []
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            logits = lean(ids, torch.ones_like(ids), torch.arange(len(prompt))[None], cache)
            for step in range(steps):
                tokens.append(int(logits.argmax()))
                nxt = forced[step] if forced is not None else tokens[-1]
                at = len(prompt) + step
                logits = lean(torch.tensor([[nxt]]), torch.ones(1, at + 1, dtype=torch.long), torch.tensor([[at]]),
                              cache)
        return tokens

    agree = total = 0
    for text in ("Tell me a story about a cat.", "Explain recursion in one paragraph.", "Who wrote Hamlet?"):
        prompt = smol.encode_chat([{"role": "user", "content": text}])
        reply = decode(plain, prompt)
        got = decode(fused, prompt, forced=reply)
        agree += sum(a == b for a, b in zip(reply, got))
        total += len(reply)
    assert agree / total >= 0.9, (agree, total)


needs_vnni = pytest.mark.skipif(not kernels.has_vnni(), reason="the 4-bit kernel needs AVX512-VNNI; elsewhere "
                                "Int4Linear's own forward runs (tested in test_quantize.py)")


@needs_vnni
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
@pytest.mark.parametrize("width,outputs,bias", [(32, 16, False), (576, 960, False), (1536, 576, True),
                                                (96, 48, True)])
def test_a_4_bit_layer_through_the_kernel_is_its_python_forward_bit_for_bit(ops, rows, width, outputs, bias):
    """--quantize int4: every row count (eight rows at a time, then 1-7 left over), one and many groups of 32
    inputs, with and without bias; the residual add and the norm before it too. One loud row keeps its own scale."""
    from corolab.serving.backends.cpu.quantize import Int4Linear

    torch.manual_seed(rows * 13 + width)
    layer = Int4Linear(torch.nn.Linear(width, outputs, bias=bias))
    x = torch.randn(rows, 1, width)
    x[0, 0, 3] = 500.0
    expected = layer(x)  # no kernels handed over yet: the Python forward
    assert torch.equal(ops.int8_linear(x, *layer.kernel_args()), expected)
    residual = torch.randn(rows, 1, outputs)
    assert torch.equal(ops.int8_linear(x, *layer.kernel_args(), residual), residual + expected)
    norm = torch.rand(width) + 0.5
    normed = torch.nn.functional.rms_norm(x, (width,), norm, 1e-5)
    got = ops.int8_linear(x, *layer.kernel_args(), None, norm, 1e-5)
    assert torch.allclose(got, layer(normed), rtol=1e-3, atol=1e-3)  # torch's RMSNorm sums in its own order
    layer.pack(ops)
    assert torch.equal(layer(x), expected)


@needs_vnni
def test_a_4_bit_row_is_the_same_alone_in_a_batch_and_on_any_thread_count(ops):
    from corolab.serving.backends.cpu.quantize import Int4Linear

    torch.manual_seed(5)
    layer = Int4Linear(torch.nn.Linear(576, 3072, bias=False))
    x = torch.randn(21, 576)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            together = ops.int8_linear(x, *layer.kernel_args())
            alone = torch.cat([ops.int8_linear(x[i:i + 1], *layer.kernel_args()) for i in range(len(x))])
            assert torch.equal(together, alone), threads
            outs.append(together)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0], out) for out in outs[1:])


@needs_vnni
def test_the_4_bit_kernel_refuses_a_wrong_layout(ops):
    from corolab.serving.backends.cpu.quantize import Int4Linear

    layer = Int4Linear(torch.nn.Linear(64, 32, bias=False))
    args = layer.kernel_args()
    with pytest.raises(RuntimeError, match="4-bit weight layout"):
        ops.int8_linear(torch.randn(1, 64), args[0][..., :256].contiguous(), *args[1:])
    with pytest.raises(RuntimeError, match="features"):
        ops.int8_linear(torch.randn(1, 63), *args)
