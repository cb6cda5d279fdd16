"""Prefix reuse: requests to one chat server begin with the same tokens (the chat template's opening and
the system prompt), so their keys and values are the same in every row. They are computed once, kept, and
copied into each joining row; the prefill then runs only on the tokens that differ.

vLLM's automatic prefix caching is the general form (a tree of cached blocks). This is its smallest useful
case, one remembered token sequence, which is enough for a server whose clients share a system prompt.
It is exact: a causal model's keys and values at a position depend only on the tokens up to it, so any
leading part of the remembered sequence can be reused by a prompt that starts the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# per layer: keys and values, [1, heads, tokens, head_dim]; torch is imported only where a model is loaded
KV = list[tuple["torch.Tensor", "torch.Tensor"]]  # noqa: F821


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixStore:
    """One remembered token sequence and its keys/values, and the rule for when to replace it."""

    def __init__(self, compute: Callable[[list[int]], KV], min_tokens: int = 8) -> None:
        self._compute = compute          # tokens -> their keys/values (one forward pass at batch 1)
        self.min_tokens = min_tokens     # shorter shared parts are not worth the copy
        self.tokens: list[int] = []
        self.kv: KV = []
        self.reused_tokens = 0           # prompt tokens whose prefill was skipped, for /metrics and tests
        self.computed = 0                # how many times a prefix was (re)computed

    def lookup(self, prompts: Sequence[Sequence[int]]) -> tuple[int, KV]:
        """How many leading tokens of every prompt can be served from the store, and their keys/values.

        Every prompt keeps at least its last two tokens to prefill: the last one's logits give the first new
        token, and with two the forward pass takes the prefill path, whose sums match the prompt prefilled
        whole (one token alone would take the decoding path, which rounds differently). The
        store is replaced when nothing useful is in it, or when a group of prompts shares a longer opening
        than the stored one: computing it once at batch 1 then saves that many tokens in every row.
        """
        limit = min(len(p) for p in prompts) - 2
        shared = limit
        for p in prompts[1:]:
            shared = min(shared, common_prefix_length(prompts[0], p))
        have = min(common_prefix_length(self.tokens, prompts[0][:shared]), shared)
        longer = len(prompts) > 1 and shared > have
        if shared >= self.min_tokens and (have < self.min_tokens or longer):
            self.tokens = list(prompts[0][:shared])
            self.kv = self._compute(self.tokens)
            self.computed += 1
            have = shared
        if have < self.min_tokens:
            return 0, []
        self.reused_tokens += have * len(prompts)
        return have, [(k[:, :, :have], v[:, :, :have]) for k, v in self.kv]
