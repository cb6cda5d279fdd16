"""Greedy replies of a batch's rows, step by step: what the "same alone or in any batch" tests compare."""

from __future__ import annotations

from corolab.serving.params import SamplingParams


def greedy_replies(backend, prompts: list[list[int]], rows: list[int], tokens: int,
                   check=None) -> dict[int, list[int]]:
    """Each of ``rows`` (indices into ``prompts``) prefilled together in one new batch, then decoded greedily
    together to ``tokens`` tokens; ``check(batch)``, when given, runs after the prefill."""
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    batch = backend.new_batch()
    out = {key: [token] for key, token in batch.add_many([(key, prompts[key], params) for key in rows]).items()}
    if check is not None:
        check(batch)
    for _ in range(tokens - 1):
        for key, token in batch.step().items():
            out[key].append(token)
    return out
