"""The fused C++ kernels (``corolab/backends/kernels.cpp``) compute exactly what the Python path computes.

Exactly means bit for bit: the tests compare with ``torch.equal``, never a tolerance. That is the kernels'
contract: they remove calls, never change a number, so a reply is the same with them, without them, alone
or in any batch.
"""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

from corolab.backends import kernels  # noqa: E402
from corolab.backends.quantize import Int8Linear, quantize_linears  # noqa: E402
from corolab.params import SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def ops():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler here: the Python path runs instead (tested everywhere else)")
    loaded = kernels.ops()
    assert loaded is not None, "a compiler is here, so the kernels must build (see the message above)"
    return loaded


@pytest.mark.parametrize("rows,width,outputs", [(1, 64, 48), (7, 96, 80), (32, 576, 1728), (3, 64, 9000)])
def test_int8_linear_is_the_python_layer_bit_for_bit(ops, rows, width, outputs):
    """Quantize, ``_int_mm``, dequantize: one call. 9,000 outputs span several column blocks of the kernel;
    one loud row checks that each row keeps its own scale."""
    torch.manual_seed(rows)
    layer = Int8Linear(torch.nn.Linear(width, outputs, bias=False))
    x = torch.randn(rows, 1, width)
    x[0, 0, 3] = 500.0
    assert torch.equal(ops.int8_linear(x, layer.weight_int8, layer.scale, layer.weight_sum), layer(x))
    residual = torch.randn(rows, 1, outputs)
    assert torch.equal(ops.int8_linear(x, layer.weight_int8, layer.scale, layer.weight_sum, None, residual), residual + layer(x))


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


def test_attention_refuses_a_full_cache_and_a_bad_length(ops):
    """The kernel writes into the cache in place, so it checks the room it was given."""
    qkv = torch.randn(1, (4 + 2 * 2) * 16)
    cos = sin = torch.ones(1, 16)
    keys, values = torch.zeros(1, 2, 8, 16), torch.zeros(1, 2, 8, 16)
    with pytest.raises(RuntimeError, match="no room"):
        ops.attend_decode(qkv, cos, sin, keys, values, 8, torch.tensor([1]), None, 4, 2)
    with pytest.raises(RuntimeError, match="keys of"):
        ops.attend_decode(qkv, cos, sin, keys, values, 3, torch.tensor([5]), None, 4, 2)


def _quantized_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    quantize_linears(model)
    return model


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "batched"])
def test_decode_steps_are_the_python_path_bit_for_bit(ops, exact):
    """Rows of different lengths (left padding), a cache that must grow mid-run, six decode steps: the
    fused pass's logits and cache equal the Python pass's."""
    from corolab.backends.kvcache import empty_cache
    from corolab.backends.llama_forward import LlamaForward

    model = _quantized_tiny_llama()
    plain, fused = LlamaForward(model, exact=exact), LlamaForward(model, exact=exact, kernels=ops)
    assert fused.kernels is not None and plain.kernels is None
    ids = torch.tensor([[0, 0, 0, 5, 6, 7], [9, 10, 11, 12, 13, 14], [0, 3, 4, 5, 6, 7]])
    mask = (ids != 0).long()
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    caches = {"plain": empty_cache(2), "fused": empty_cache(2)}
    with torch.inference_mode():
        for step in range(7):
            got = {name: forward(ids, mask, positions, caches[name])
                   for name, forward in (("plain", plain), ("fused", fused))}
            assert torch.equal(got["plain"], got["fused"]), step
            if step == 0:  # leave one spare column: the fused pass must grow the cache as update() would
                for cache in caches.values():
                    for layer in cache.layers:
                        layer.set(layer.keys, layer.values, spare=1)
            ids = got["plain"].argmax(-1, keepdim=True)
            positions = mask.sum(dim=1, keepdim=True)
            mask = torch.cat([mask, mask.new_ones((3, 1))], dim=1)
    for a, b in zip(caches["plain"].layers, caches["fused"].layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.mark.model
def test_the_model_replies_the_same_with_and_without_the_kernels(smol):
    """On the embedded model, in its default mode: 24 greedy tokens for four rows of different lengths."""
    from corolab.backends.llama_forward import LlamaForward

    assert smol.lean is not None and smol.lean.kernels is not None  # the default CPU path uses them
    fused = smol.lean
    greedy = SamplingParams(temperature=0, ignore_eos=True, max_tokens=100)
    prompts = [smol.encode_chat([{"role": "user", "content": text}]) for text in (
        "Tell me a story about a cat.", "Hi", "Write a haiku about autumn, then explain it.", "2+2?")]

    def run(lean):
        smol.lean = lean
        try:
            batch = smol.new_batch()
            got = {k: [t] for k, t in batch.add_many([(k, p, greedy) for k, p in enumerate(prompts)]).items()}
            for _ in range(24):
                for key, token in batch.step().items():
                    got[key].append(token)
            return got
        finally:
            smol.lean = fused

    assert run(LlamaForward(smol.model, exact=fused.exact)) == run(fused)
