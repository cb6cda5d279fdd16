"""The real backend: any Hugging Face causal language model, by id or local path, with its chat template.

Nothing is downloaded at run time unless the user's environment allows it: ids resolve from the local
Hugging Face cache. The embedded default model (``corolab.serving.backends.embedded``) is a local path too.

Its job is loading (tokenizer, end-of-sequence ids, weights) and running the model's forward pass. The rest
lives beside it, one job each: where and in what numbers the model runs
(:mod:`corolab.serving.backends.placement`), the batch (:mod:`corolab.serving.backends.hf_batch`), the
streaming detokenizer (:mod:`corolab.serving.backends.stream_decoder`), and the CPU speed path
(:mod:`corolab.serving.backends.cpu`), which it calls once, through :func:`~corolab.serving.backends.cpu.faster_forward`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from corolab.serving.backends.base import Backend, BackendInfo, Batch, Detokenizer
from corolab.serving.backends.placement import pick_device, pick_dtype, pick_quantization
from corolab.serving.backends.prefix import KV, PrefixStore
from corolab.serving.choices import weights_of
from corolab.serving.config import ModelConfig


def end_of_sequence_ids(tokenizer, generation_config) -> frozenset[int]:
    """Every id that ends a reply: the tokenizer's EOS, the generation config's (one or a list), and ChatML's
    ``<|im_end|>`` where the vocabulary has it (chat models often end a turn with it, not with EOS)."""
    eos = {tokenizer.eos_token_id}
    gen_eos = getattr(generation_config, "eos_token_id", None)
    eos |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        eos.add(im_end)
    return frozenset(e for e in eos if e is not None)


class HFBackend(Backend):
    """A Hugging Face model, set up by a :class:`~corolab.serving.config.ModelConfig` (its one source of
    settings: the backend has no defaults of its own). ``model_id`` names it where its path should not."""

    def __init__(self, config: ModelConfig, *, model_id: str | None = None) -> None:
        self.config = config.validate()
        if config.model is None:
            raise ValueError("HFBackend needs a model id or path; load_backend(None) is the embedded model")
        self.source = config.model
        self.quantization = "none"  # what load() chose
        self.lean = None  # the CPU path's faster forward, when the model allows it (set by load())
        self.prefixes: PrefixStore | None = None  # created by load(), when the prefix cache is on
        self.model = None
        self.tokenizer = None
        self.device = "cpu"
        # until load() says what it found: the CPU and float32
        self.info = BackendInfo(model_id=model_id or config.model, context_window=2048, backend="hf",
                                device=self.device, dtype="float32")
        self._eos: frozenset[int] = frozenset()
        self.cache_kwarg = "past_key_values"
        self.pad_token_id = 0

    def load(self) -> None:
        if self.model is not None:  # already loaded (engines call load() in start(); a restart is free)
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from corolab.serving.backends import cpu
        from corolab.serving.backends.kvcache import kv_bytes_per_token

        cpu.prepare_process(self.config.threads)
        self.device = pick_device(self.config.device)
        dtype = pick_dtype(self.config.dtype, self.device)
        extra: dict = {"local_files_only": True}  # never a download in the middle of serving
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.source, **extra)
            model = AutoModelForCausalLM.from_pretrained(self.source, dtype=dtype, **extra)
        except OSError as exc:
            raise RuntimeError(
                f"cannot load model {self.source!r}: {exc}. Give a local path, or an id already in your Hugging "
                "Face cache; corolab does not download models."
            ) from exc
        self.model = model.to(self.device).eval()
        self.quantization = pick_quantization(self.config.quantize, self.device, str(dtype).removeprefix("torch."))
        # transformers 5 renamed the forward argument ``past_key_values`` to ``cache``; accept both.
        self.cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        if self.tokenizer.chat_template is None:
            raise RuntimeError(f"model {self.source!r} has no chat template; corolab serves chat models only")
        self._eos = end_of_sequence_ids(self.tokenizer, model.generation_config)
        window = getattr(model.config, "max_position_embeddings", None) or 2048
        torch.set_grad_enabled(False)
        faster = cpu.faster_forward(self.model, quantization=self.quantization,
                                    exact=self.config.attention == "exact", device=self.device,
                                    encode=lambda text: self.encode_chat([{"role": "user", "content": text}]),
                                    kv_cache_dtype=self.config.kv_cache_dtype)
        self.lean = faster.forward
        self.info = replace(self.info, context_window=int(window), device=self.device,
                            dtype=str(dtype).removeprefix("torch."), quantization=self.quantization,
                            kv_bytes_per_token=kv_bytes_per_token(model.config, faster.kv_dtype or dtype))
        if faster.forward is None:
            print(f"corolab: {faster.reason}", file=sys.stderr)
        if self.config.prefix_cache:
            self.prefixes = PrefixStore(self._prefix_kv)
        bits = weights_of(self.quantization)
        weights = f"{bits} weights{', LM head int8' if bits == 'int4' else ''}, " if bits != "none" else ""
        print(f"corolab: loaded {self.info.model_id} on {self.device} ({weights}{self.info.dtype})", file=sys.stderr)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def new_detokenizer(self) -> Detokenizer | None:
        """The ``tokenizers`` library's own streaming decoder, where the tokenizer is a fast (Rust) one."""
        inner = getattr(self.tokenizer, "backend_tokenizer", None) or getattr(self.tokenizer, "_tokenizer", None)
        if inner is None:
            return None
        from corolab.serving.backends.stream_decoder import StreamDecoder

        return StreamDecoder(inner)

    @property
    def prefix_hits(self) -> int:
        return self.prefixes.reused_tokens if self.prefixes else 0

    def check(self) -> None:
        """Fail fast, with one line, on what would only fail later in the background: a device that is not
        there, a model that is neither a local folder nor in the local Hugging Face cache."""
        pick_device(self.config.device)
        if Path(self.source).exists():
            return
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(self.source, local_files_only=True)
        except Exception:
            raise ValueError(
                f"--model {self.source}: not a local folder, and not in the local Hugging Face cache; give a "
                "local path or an id you have downloaded (corolab never downloads models)") from None

    def thread_tuner(self):  # -> ThreadTuner | None
        """On a CPU, unless ``--threads`` fixed the number: the thread count measured while serving."""
        from corolab.serving.backends.cpu import thread_tuner

        return thread_tuner() if self.config.threads is None and self.device == "cpu" else None

    def new_batch(self) -> Batch:
        from corolab.serving.backends.hf_batch import HFBatch  # imports torch: only once a model is loaded

        return HFBatch(self)

    def forward(self, ids, mask, positions, cache):  # -> torch.Tensor
        """Logits of each row's last position, after running ``ids`` (rows left-padded; ``mask``: 1 for a real
        token, over the cache's columns and these) and appending their keys and values to ``cache``.

        Llama-shaped models go through the CPU path's faster forward
        (:class:`corolab.serving.backends.cpu.llama_forward.LlamaForward`: the same weights, a tenth of the
        Python); any other model through its own ``forward``."""
        if self.lean is not None:
            return self.lean(ids, mask, positions, cache)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self.cache_kwarg: cache})
        return out.logits[:, -1, :]

    def _prefix_kv(self, tokens: list[int]) -> KV:
        """Keys and values of ``tokens`` alone, at positions 0.., from one forward pass at batch 1."""
        import torch

        from corolab.serving.backends.kvcache import empty_cache

        cache = empty_cache(self.model.config.num_hidden_layers)
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            self.forward(ids, torch.ones_like(ids), torch.arange(len(tokens), device=self.device).unsqueeze(0),
                         cache)
        return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
