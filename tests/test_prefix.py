"""Prefix reuse: the rule for what is remembered and reused, and, on the real model, that reusing a shared
opening changes nothing in what the model generates."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from corolab.serving.backends.prefix import PrefixStore, common_prefix_length  # noqa: E402
from corolab.serving.engine.base import SamplingParams  # noqa: E402


def fake_kv(tokens: list[int]):
    """Keys/values whose values are the token ids themselves, so a test can see which tokens it got."""
    t = torch.tensor(tokens, dtype=torch.float32).view(1, 1, -1, 1)
    return [(t.clone(), -t.clone()) for _ in range(2)]


def store(min_tokens: int = 4) -> tuple[PrefixStore, list[list[int]]]:
    calls: list[list[int]] = []

    def compute(tokens):
        calls.append(list(tokens))
        return fake_kv(tokens)

    return PrefixStore(compute, min_tokens=min_tokens), calls


SYSTEM = [101, 102, 103, 104, 105, 106]


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [1]) == 0


def test_a_group_computes_its_shared_opening_once_and_every_row_gets_it():
    s, calls = store()
    prompts = [SYSTEM + [1, 2], SYSTEM + [3, 3], SYSTEM + [4, 5, 6]]
    n, kv = s.lookup(prompts)
    assert n == len(SYSTEM) and calls == [SYSTEM]
    assert kv[0][0].flatten().tolist() == SYSTEM and kv[1][1].flatten().tolist() == [-t for t in SYSTEM]
    assert s.reused_tokens == 3 * len(SYSTEM)


def test_later_prompts_reuse_the_stored_opening_without_recomputing():
    s, calls = store()
    s.lookup([SYSTEM + [1, 1], SYSTEM + [2, 2]])
    n, kv = s.lookup([SYSTEM[:4] + [9, 9, 9]])          # shares only part of it: that part is reused
    assert n == 4 and kv[0][0].flatten().tolist() == SYSTEM[:4]
    n, _ = s.lookup([SYSTEM + [7, 8]])
    assert n == len(SYSTEM) and len(calls) == 1


def test_every_prompt_keeps_its_last_two_tokens_to_prefill():
    s, _ = store()
    n, _ = s.lookup([SYSTEM, SYSTEM + [1]])               # one prompt is exactly the shared part
    assert n == len(SYSTEM) - 2


def test_a_group_with_a_longer_shared_opening_replaces_the_store():
    s, calls = store()
    s.lookup([SYSTEM + [1, 1], SYSTEM + [2, 2]])
    longer = SYSTEM + [50, 51, 52]
    n, _ = s.lookup([longer + [1, 1], longer + [2, 2]])
    assert n == len(longer) and calls[-1] == longer


def test_short_shared_parts_are_not_reused():
    s, calls = store(min_tokens=4)
    assert s.lookup([[1, 2, 3, 9], [1, 2, 3, 8]]) == (0, [])
    assert calls == [] and s.reused_tokens == 0


def continuations(backend, prompts, steps=20) -> dict[int, list[int]]:
    """Greedy tokens per prompt: half join together, the rest one by one while the first half runs."""
    batch, params = backend.new_batch(), SamplingParams(max_tokens=64, temperature=0.0)
    out: dict[int, list[int]] = {i: [] for i in range(len(prompts))}

    def record(tokens):
        for key, token in tokens.items():
            out[key].append(token)

    half = len(prompts) // 2
    record(batch.add_many([(i, prompts[i], params) for i in range(half)]))
    record(batch.step())
    for i in range(half, len(prompts)):
        record(batch.add_many([(i, prompts[i], params)]))
        record(batch.step())
    for _ in range(steps):
        record(batch.step())
    return out


@pytest.mark.model
def test_reusing_the_shared_opening_generates_exactly_the_same_tokens(smol):
    from corolab.serving.backends.embedded import EmbeddedBackend
    from corolab.serving.config import ModelConfig
    from corolab.bench.dataset import synthetic_prompts

    plain = EmbeddedBackend(ModelConfig(prefix_cache=False))
    plain.load()
    assert plain.prefixes is None and smol.prefixes is not None
    prompts = [smol.encode_chat(p.messages()) for p in synthetic_prompts(6, prompt_tokens=24, seed=3)]
    before = smol.prefixes.reused_tokens
    with_reuse, without = continuations(smol, prompts), continuations(plain, prompts)
    assert smol.prefixes.reused_tokens - before >= 6 * 8          # it did reuse something for every prompt
    n = min(len(v) for v in with_reuse.values())
    assert n > 15
    assert {k: v[:n] for k, v in with_reuse.items()} == {k: v[:n] for k, v in without.items()}


@pytest.mark.model
def test_a_prefix_computed_alone_has_the_keys_and_values_of_the_whole_prompt_bit_for_bit(smol):
    """The reason reuse is exact: the keys and values of the first tokens do not depend on how many tokens
    follow them in the same prefill (prefill attention pads its keys to whole blocks, llama_forward)."""
    from corolab.bench.dataset import synthetic_prompts

    prompt = smol.encode_chat(synthetic_prompts(1, prompt_tokens=40, seed=5)[0].messages())
    whole = smol._prefix_kv(prompt)
    for cut in (5, 17, 24, len(prompt) - 1):
        alone = smol._prefix_kv(prompt[:cut])
        for layer, ((k1, v1), (k2, v2)) in enumerate(zip(alone, whole)):
            assert torch.equal(k1, k2[:, :, :cut]) and torch.equal(v1, v2[:, :, :cut]), (cut, layer)
