"""The real backend: any Hugging Face causal language model, by id or local path, with its chat template.

Nothing is downloaded at run time unless the user's environment allows it: ids resolve from the local
Hugging Face cache. The embedded default model (``corolab.serving.backends.embedded``) is a local path too.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from collections.abc import Sequence
from dataclasses import replace

from corolab.serving.backends.base import Backend, BackendInfo, Batch, Detokenizer, Outcome, PrefillChunk
from corolab.serving.backends.prefix import KV, PrefixStore
from corolab.serving.params import SamplingParams


def pick_device(device: str) -> str:
    """``auto``: CUDA, then Apple's MPS, then the CPU. A device asked for by name must exist here."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"--device cuda: {why}; use --device cpu (or auto)")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: Apple's MPS is not available here; use --device cpu (or auto)")
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str):  # -> torch.dtype
    """``auto``: bfloat16 on CUDA, float32 elsewhere.

    Why float32 on a CPU even where bf16 is much faster (on CPUs with AVX512-BF16 or AMX, bf16 matmuls run
    about 4x faster and the server ~2.5x; benchmarks/RESULTS.md): in float32 a greedy reply comes out the
    same alone or in a crowd (tests/test_engines.py checks it on the model), which the book relies on. In
    bf16, rounding differs with the batch's shape: measured, 3 of 6 greedy replies changed within 12 tokens
    depending on which requests shared their steps.
    ``--dtype bfloat16`` is there for when speed matters more than that.
    """
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


QUANTIZE_CHOICES = ("auto", "none", "int8", "int8-nosmooth")


def pick_quantization(quantize: str, device: str, dtype: str = "float32") -> str:
    """``auto``: ``int8`` on a CPU in float32 (what ``--dtype auto`` picks there), ``none`` otherwise.

    Why int8 by default on a CPU: it runs a decode step 2-4x faster than float32 at every batch size
    (memory-bound at one stream, arithmetic-bound at many) and a greedy reply stays the same alone or in a batch,
    because every row has its own activation scale and the int32 sums are exact (:mod:`corolab.serving.backends.quantize`).
    It costs little quality once smoothed: on float32's own greedy replies the mean loss rose 0.3%
    (benchmarks/RESULTS.md, "Weight quantization"). ``none`` serves the model's float weights exactly.
    On a GPU bf16 is already fast and ``torch._int_mm`` has shape limits there, so int8 is a CPU path only;
    its scales and the layers between the matmuls compute in float32, so an explicit ``--dtype bfloat16`` or
    ``float16`` means no int8.
    ``int8-nosmooth`` (benchmarks only) skips the smoothing, to measure what it buys.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown --quantize {quantize!r}; use auto, none or int8")
    if quantize == "auto":
        return "int8" if device == "cpu" and dtype == "float32" else "none"
    if quantize.startswith("int8") and device != "cpu":
        raise ValueError(f"--quantize int8 runs on a CPU only; on {device} use --quantize none (bf16 is fast there)")
    if quantize.startswith("int8") and dtype != "float32":
        raise ValueError(f"--quantize int8 computes in float32; drop --dtype {dtype} or use --quantize none")
    return quantize


class StreamDecoder:
    """Incremental detokenizing by ``tokenizers.decoders.DecodeStream``: the library keeps the window of
    recent ids and holds back an incomplete UTF-8 character, as :mod:`corolab.serving.engine.detok` does by hand."""

    def __init__(self, tokenizer) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)

    def push(self, token: int) -> str:
        return self._stream.step(self._tokenizer, token) or ""


class HFBatch(Batch):
    """Rows of one left-padded KV cache (see :mod:`corolab.serving.backends.kvcache`).

    Joining requests are prefilled together in one padded forward pass (``add_many``), then merged into
    the running cache. A prompt longer than one step's prefill budget arrives in chunks (``prefill``): its
    row's cache grows chunk by chunk beside the batch and joins it with the last chunk. Each step feeds every
    row its last token with that row's own position id, so a row that joined late (shorter, more left
    padding) computes exactly what it would compute alone (in float32; see :func:`pick_dtype` for bf16).
    """

    def __init__(self, backend: HFBackend) -> None:
        super().__init__()
        self._b = backend
        self._keys: list[int | None] = []  # one per cache row; None: left, row not dropped yet
        self._samplers: list = []
        self._last: list[int] = []
        self._left: list[int] = []  # per row: how many more tokens it may generate (its cache columns to come)
        self._cache = None
        self._mask = None
        self._pending: dict[int, object] = {}  # key -> the cache of a prompt still arriving in chunks

    def __len__(self) -> int:
        return sum(key is not None for key in self._keys)

    def add_many(self, items: Sequence[tuple[int, Sequence[int], SamplingParams]]) -> dict[int, Outcome]:
        import torch

        from corolab.serving.backends.kvcache import close_holes, empty_cache
        from corolab.serving.backends.sampling import sample

        outcomes: dict[int, Outcome] = {}
        items, samplers = self._samplers_for(items, outcomes)
        if not items:
            return outcomes
        self._compact()
        model, device = self._b.model, self._b.device
        prompts = [list(prompt) for _, prompt, _ in items]
        # The opening every prompt shares (chat template, system prompt) is not prefilled again: its keys and
        # values come from the prefix store, and the forward pass below runs on the rest of each prompt.
        shared, prefix_kv = self._b.prefixes.lookup(prompts) if self._b.prefixes else (0, [])
        width = max(len(prompt) - shared for prompt in prompts)
        ids = torch.full((len(items), width), self._b.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            rest = prompt[shared:]
            ids[row, width - len(rest):] = torch.tensor(rest, dtype=torch.long)
            mask[row, width - len(rest):] = 1
        ids, mask = ids.to(device), mask.to(device)
        row_cache = empty_cache(model.config.num_hidden_layers)
        if shared:  # cache columns: [shared prefix][left padding][rest of the prompt]; the mask hides the padding
            for layer, (keys, values) in zip(row_cache.layers, prefix_kv):
                layer.set(keys.expand(len(items), -1, -1, -1), values.expand(len(items), -1, -1, -1),
                          spare=width + 64)
            mask = torch.cat([mask.new_ones((len(items), shared)), mask], dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, shared:]
        with torch.inference_mode():
            logits = self._b.forward(ids, mask, positions, row_cache)
        tokens = sample(logits.float(), samplers)
        if shared:
            row_cache, mask = close_holes(row_cache, mask)
        self._join([key for key, _, _ in items], samplers, tokens, row_cache, mask,
                   [params.max_tokens for _, _, params in items])
        outcomes.update({key: token for (key, _, _), token in zip(items, tokens)})
        return outcomes

    def prefill(self, chunks: Sequence[PrefillChunk]) -> dict[int, Outcome]:
        """Whole prompts go together through :meth:`add_many`; a prompt in chunks extends its own cache."""
        whole = [(c.key, c.prompt, c.params) for c in chunks if c.start == 0 and c.last]
        outcomes = self.add_many(whole) if whole else {}
        for chunk in chunks:
            if chunk.start == 0 and chunk.last:
                continue
            try:
                token = self._prefill_chunk(chunk)
            except Exception as exc:  # this prompt fails alone; the batch goes on
                self._pending.pop(chunk.key, None)
                outcomes[chunk.key] = exc
                continue
            if token is not None:
                outcomes[chunk.key] = token
        return outcomes

    def _prefill_chunk(self, chunk: PrefillChunk) -> int | None:
        """Run ``prompt[start:end]`` on the sequence's own cache (batch of one, no padding); at the last
        chunk sample the first token and move the row into the batch."""
        import torch

        from corolab.serving.backends.kvcache import empty_cache
        from corolab.serving.backends.sampling import RowSampler, sample

        if chunk.start == 0:
            self._pending[chunk.key] = empty_cache(self._b.model.config.num_hidden_layers)
        cache = self._pending[chunk.key]
        device = self._b.device
        ids = torch.tensor([list(chunk.prompt[chunk.start:chunk.end])], dtype=torch.long, device=device)
        mask = torch.ones((1, chunk.end), dtype=torch.long, device=device)
        positions = torch.arange(chunk.start, chunk.end, device=device).unsqueeze(0)
        sampler = RowSampler(chunk.params, device) if chunk.last else None  # refuse a bad seed before the work
        with torch.inference_mode():
            logits = self._b.forward(ids, mask, positions, cache)
        if sampler is None:
            return None
        del self._pending[chunk.key]
        self._compact()
        token = sample(logits.float(), [sampler])[0]
        self._join([chunk.key], [sampler], [token], cache, mask, [chunk.params.max_tokens])
        return token

    def _samplers_for(self, items, outcomes: dict[int, Outcome]):
        """Each row's sampler; a row whose settings its sampler refuses fails here, alone."""
        from corolab.serving.backends.sampling import RowSampler

        kept, samplers = [], []
        for item in items:
            try:
                samplers.append(RowSampler(item[2], self._b.device))
            except Exception as exc:
                outcomes[item[0]] = exc
                continue
            kept.append(item)
        return kept, samplers

    def _join(self, keys: list[int], samplers: list, tokens: list[int], row_cache, mask,
              max_tokens: list[int]) -> None:
        from corolab.serving.backends.kvcache import merge_rows

        left = [max(n - 1, 0) for n in max_tokens]  # the first token is out: it came from the prefill
        width = max(mask.shape[1], 0 if self._mask is None else self._mask.shape[1])
        self._cache, self._mask = merge_rows(self._cache, self._mask, row_cache, mask,
                                             spare=self._spare(width, [*self._left, *left]))
        self._keys.extend(keys)
        self._samplers.extend(samplers)
        self._last.extend(tokens)
        self._left.extend(left)

    def _spare(self, width: int, left: list[int] | None = None) -> int:
        """Cache columns to allocate ahead of ``width``: as many as doubling would, but no more than the
        longest-running row (of ``left``, default: this batch's rows) may still generate (see
        :mod:`corolab.serving.backends.kvcache`)."""
        return min(max(self._left if left is None else left, default=0) + 1, max(64, width))

    def step(self) -> dict[int, int]:
        import torch

        from corolab.serving.backends.kvcache import ensure_room
        from corolab.serving.backends.sampling import sample

        if not len(self):
            return {}
        self._compact()
        device = self._b.device
        ids = torch.tensor(self._last, device=device).unsqueeze(1)
        ensure_room(self._cache, 1, spare=self._spare(self._mask.shape[1]))
        positions = self._mask.sum(dim=1, keepdim=True)  # real tokens so far = the new token's position
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._keys), 1))], dim=1)
        with torch.inference_mode():
            logits = self._b.forward(ids, self._mask, positions, self._cache)
        tokens = sample(logits.float(), self._samplers)
        self._last = tokens
        self._left = [max(n - 1, 0) for n in self._left]
        return dict(zip(self._keys, tokens))

    def remove(self, key: int) -> None:
        """Forget a row now; its cache row is dropped before the next forward pass, together with every
        other row that left meanwhile (requests often finish together: one copy of the cache, not one each)."""
        self._pending.pop(key, None)
        if key not in self._keys:
            return
        self._keys[self._keys.index(key)] = None
        if not len(self):
            self._keys, self._samplers, self._last, self._left = [], [], [], []
            self._cache = self._mask = None

    def _compact(self) -> None:
        from corolab.serving.backends.kvcache import select_rows

        keep = [row for row, key in enumerate(self._keys) if key is not None]
        if len(keep) == len(self._keys):
            return
        left = [self._left[row] for row in keep]
        self._cache, self._mask = select_rows(self._cache, self._mask, keep,
                                              spare=self._spare(self._mask.shape[1], left))
        self._keys = [self._keys[row] for row in keep]
        self._samplers = [self._samplers[row] for row in keep]
        self._last = [self._last[row] for row in keep]
        self._left = left


class HFBackend(Backend):
    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", quantize: str = "auto",
                 attention: str = "exact", model_id: str | None = None, gguf_file: str | None = None, prefix_cache: bool = True,
                 threads: int | None = None) -> None:
        self.source = model
        self.quantize_request = quantize
        if attention not in ("exact", "batched"):
            raise ValueError(f"unknown --attention {attention!r}; use exact or batched")
        self.attention = attention
        self.quantization = "none"  # what load() chose
        self.lean = None  # a LlamaForward when the model is Llama-shaped (set by load())
        self.threads = threads
        self.prefix_cache = prefix_cache
        self.prefixes: PrefixStore | None = None  # created by load(), when prefix_cache is on
        self.gguf_file = gguf_file
        self.device_request, self.dtype_request = device, dtype
        self.model = None
        self.tokenizer = None
        self.device = "cpu"
        self.info = BackendInfo(model_id=model_id or model, context_window=2048, backend="hf")
        self._eos: frozenset[int] = frozenset()
        self.cache_kwarg = "past_key_values"
        self.pad_token_id = 0

    def load(self) -> None:
        if self.model is not None:  # already loaded (engines call load() in start(); a restart is free)
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from corolab.serving.backends.allocator import keep_freed_memory
        from corolab.serving.backends.threads import use_threads

        use_threads(self.threads)
        keep_freed_memory()
        self.device = pick_device(self.device_request)
        dtype = pick_dtype(self.dtype_request, self.device)
        extra: dict = {"local_files_only": True}  # never a download in the middle of serving
        if self.gguf_file:
            extra["gguf_file"] = self.gguf_file
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.source, **extra)
            model = AutoModelForCausalLM.from_pretrained(self.source, dtype=dtype, **extra)
        except OSError as exc:
            raise RuntimeError(
                f"cannot load model {self.source!r}: {exc}. Give a local path, or an id already in your Hugging "
                "Face cache; corolab does not download models."
            ) from exc
        self.model = model.to(self.device).eval()
        self.quantization = pick_quantization(self.quantize_request, self.device, str(dtype).removeprefix("torch."))
        # transformers 5 renamed the forward argument ``past_key_values`` to ``cache``; accept both.
        self.cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        if self.tokenizer.chat_template is None:
            raise RuntimeError(f"model {self.source!r} has no chat template; corolab serves chat models only")
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            eos.add(im_end)
        self._eos = frozenset(e for e in eos if e is not None)
        window = getattr(model.config, "max_position_embeddings", None) or 2048
        self.info = replace(self.info, context_window=int(window), device=self.device,
                            dtype=str(dtype).removeprefix("torch."), quantization=self.quantization)
        torch.set_grad_enabled(False)
        if self.quantization != "none":
            self._quantize()
        from corolab.serving.backends.llama_forward import LlamaForward, supports

        self.lean = None
        if supports(self.model):
            kernels = None
            if self.quantization != "none":
                from corolab.serving.backends.kernels import ops

                kernels = ops()  # fused int8 kernels, fewer calls per step; None: the Python path
            self.lean = LlamaForward(self.model, exact=self.attention == "exact", kernels=kernels)
        if self.prefix_cache:
            self.prefixes = PrefixStore(self._prefix_kv)
        weights = "int8 weights, " if self.quantization != "none" else ""
        print(f"corolab: loaded {self.info.model_id} on {self.device} ({weights}{self.info.dtype})", file=sys.stderr)

    def _quantize(self) -> None:
        """Smooth (unless asked not to) on the fixed calibration messages, then swap in int8 linear layers."""
        import torch

        from corolab.serving.backends.quantize import CALIBRATION, quantize_linears, release_file_mapping, smooth

        if self.quantization != "int8-nosmooth":
            ids = [torch.tensor([self.encode_chat([{"role": "user", "content": text}])], device=self.device)
                   for text in CALIBRATION]
            smooth(self.model, ids)
        quantize_linears(self.model)
        release_file_mapping(self.model)

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
        return StreamDecoder(inner)

    @property
    def prefix_hits(self) -> int:
        return self.prefixes.reused_tokens if self.prefixes else 0

    def check(self) -> None:
        """Fail fast, with one line, on what would only fail later in the background: a device that is not
        there, a model that is neither a local folder nor in the local Hugging Face cache."""
        pick_device(self.device_request)
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
        from corolab.serving.backends.threads import thread_tuner

        return thread_tuner() if self.threads is None and self.device == "cpu" else None

    def new_batch(self) -> Batch:
        return HFBatch(self)

    def forward(self, ids, mask, positions, cache):  # -> torch.Tensor
        """Logits of each row's last position, after running ``ids`` (rows left-padded; ``mask``: 1 for a real
        token, over the cache's columns and these) and appending their keys and values to ``cache``.

        Llama-shaped models go through :class:`corolab.serving.backends.llama_forward.LlamaForward` (the same weights,
        a tenth of the Python); any other model through its own ``forward``."""
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
