"""The CPU speed path: int8 weights, a lean forward for Llama-shaped models, fused C++ kernels, the
allocator's thresholds and torch's thread count.

The backend (:mod:`corolab.serving.backends.hf`) does not reach into these modules. It calls
:func:`prepare_process` before a model loads, :func:`faster_forward` once it is loaded (the one entry to the
speed path: a faster forward, or the reason there is none, which the backend logs in one line), and
:func:`thread_tuner` for the batched engine's worker. Nothing here imports torch until one of them runs,
so importing the backend stays cheap.

- :mod:`~corolab.serving.backends.cpu.quantize`: SmoothQuant and int8 (or 4-bit) linear layers;
- :mod:`~corolab.serving.backends.cpu.llama_forward`: the lean forward of a Llama-shaped model;
- :mod:`~corolab.serving.backends.cpu.kernels` (with ``kernels.cpp``): the fused kernels, built once per machine;
- :mod:`~corolab.serving.backends.cpu.allocator`: glibc's thresholds, so freed memory is reused;
- :mod:`~corolab.serving.backends.cpu.torch_threads`: how many threads torch uses, fixed or tuned.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corolab.serving.backends.cpu.torch_threads import ThreadTuner


@dataclass(frozen=True)
class FasterForward:
    """What :func:`faster_forward` found: ``forward`` (called as ``forward(ids, mask, positions, cache)``,
    returning each row's last logits), or ``None`` and ``reason``, why the model's own forward runs."""

    forward: Callable[..., Any] | None
    reason: str | None = None
    kv_dtype: Any = None  # torch.dtype the KV cache stores; None: the model's


def prepare_process(threads: int | None) -> None:
    """Before a model loads: torch's threads (``None``: every core but one, until tuned) and glibc's
    thresholds, so a prefill's large temporaries reuse freed memory."""
    from corolab.serving.backends.cpu.allocator import keep_freed_memory
    from corolab.serving.backends.cpu.torch_threads import use_threads

    use_threads(threads)
    keep_freed_memory()


def faster_forward(model, *, quantization: str, exact: bool, device: str,
                   encode: Callable[[str], list[int]], kv_cache_dtype: str) -> FasterForward:
    """Make ``model`` fast where it can be, in place, and return the forward to run it with.

    ``quantization`` is :func:`~corolab.serving.backends.placement.pick_quantization`'s decision: ``int8``
    smooths the model on the fixed calibration messages (``encode`` tokenizes one as a chat) and swaps in int8
    layers; ``int4`` swaps in 4-bit layers inside the blocks without smoothing (it made 4-bit weights worse: a
    loss 1.19x float32's with it, 1.05x without); ``int8-nosmooth`` and ``int4-smooth`` (benchmarks) turn that
    choice around; ``none`` keeps the float weights. Once the LM head is a layer of its own, the input embedding
    is stored in the fewest bytes that keep its values (:mod:`~corolab.serving.backends.cpu.embedding`). A
    Llama-shaped model then gets :class:`~corolab.serving.backends.cpu.llama_forward.LlamaForward` (``exact``:
    attention row by row), with the fused kernels where its layers are int8 and the kernels build.
    ``kv_cache_dtype`` (``--kv-cache-dtype``) is resolved here: ``auto`` is the model's dtype. Why not float16 by
    default: on the embedded model it made a decode step only 1-6 % faster at 32-128 rows (the step is mostly
    matmuls) and moved greedy replies (RESULTS.md, "A float16 KV cache"); it halves the cache, so it is there
    for memory.
    """
    import torch

    from corolab.serving.backends.cpu.embedding import compact_input_embedding
    from corolab.serving.backends.cpu.llama_forward import LlamaForward, supports
    from corolab.serving.backends.cpu.quantize import CALIBRATION, quantize_linears, release_file_mapping, smooth
    from corolab.serving.choices import weights_of

    bits = 4 if weights_of(quantization) == "int4" else 8
    if quantization != "none":
        if quantization in ("int8", "int4-smooth"):
            smooth(model, [torch.tensor([encode(text)], device=device) for text in CALIBRATION])
        quantize_linears(model, bits)
        compact_input_embedding(model)
        release_file_mapping(model)
    if not supports(model):
        return FasterForward(None, f"{type(model).__name__} is not Llama-shaped; its own forward runs "
                                   "(slower per step, the same replies)")
    kernels = None
    if quantization != "none":
        from corolab.serving.backends.cpu.kernels import has_vnni, ops, packed_layout
        from corolab.serving.backends.cpu.quantize import pack_linears

        kernels = ops()  # fused int8 kernels, fewer calls per step; None: the Python path (ops says why)
        packed = packed_layout()
        if kernels is not None and bits == 4 and not has_vnni():
            print("corolab: --quantize int4 has a kernel for x86 CPUs with AVX512-VNNI only; this CPU runs its "
                  "Python path, far slower (a one-user step took 290 ms that way on the development machine, 6-9 "
                  "ms with the kernel); --quantize int8 is the fast path here", file=sys.stderr)
            kernels = None
        if kernels is not None and (packed or bits == 4):
            # the weights in the layout the kernels' VNNI matmul reads fastest (4-bit ones are stored in theirs)
            pack_linears(model, kernels, int8=packed)
    kv_dtype = {"float16": torch.float16, "float32": torch.float32}.get(kv_cache_dtype)
    if kv_dtype == next(model.parameters()).dtype:
        kv_dtype = None
    return FasterForward(LlamaForward(model, exact=exact, kernels=kernels, kv_dtype=kv_dtype), kv_dtype=kv_dtype)


def thread_tuner() -> ThreadTuner | None:
    """The batched engine's thread tuner for this machine (:func:`.torch_threads.thread_tuner`)."""
    from corolab.serving.backends.cpu.torch_threads import thread_tuner as tuner

    return tuner()


__all__ = ["FasterForward", "faster_forward", "prepare_process", "thread_tuner"]
