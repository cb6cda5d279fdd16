"""The CUDA path: device placement, bf16 by default, no int8, the KV cache and batched decoding on the GPU.
Skipped where torch sees no CUDA GPU (every CPU-only machine, CI included); benchmarks/bench_gpu.sh runs it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from corolab.serving.params import SamplingParams  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


@pytest.fixture(scope="module")
def gpu():
    from corolab.serving.backends.embedded import EmbeddedBackend
    from corolab.serving.config import ModelConfig

    backend = EmbeddedBackend(ModelConfig(device="cuda"))
    backend.load()
    return backend


def test_the_model_loads_on_the_gpu_in_bf16_without_int8(gpu):
    assert gpu.info.device == "cuda" and gpu.info.dtype == "bfloat16" and gpu.info.quantization == "none"
    assert next(gpu.model.parameters()).device.type == "cuda"
    assert gpu.lean is not None  # the lean Llama forward runs on CUDA too


def test_batched_decoding_on_the_gpu_keeps_its_cache_there(gpu):
    greedy = SamplingParams(temperature=0, ignore_eos=True, max_tokens=100)
    prompts = [gpu.encode_chat([{"role": "user", "content": c}]) for c in ("Hi", "What is the capital of Japan?")]
    batch = gpu.new_batch()
    got = {k: [t] for k, t in batch.add_many([(k, p, greedy) for k, p in enumerate(prompts)]).items()}
    for _ in range(11):
        for key, token in batch.step().items():
            got[key].append(token)
    assert all(layer.keys.device.type == "cuda" for layer in batch._cache.layers)
    assert "Tokyo" in gpu.decode(got[1])
    alone = gpu.new_batch()
    first = [alone.add(1, prompts[1], greedy)] + [alone.step()[1] for _ in range(3)]
    assert first == got[1][:4]  # bf16 rounding may part them later; the confident first tokens agree
