"""Where a Hugging Face model runs and in what numbers: the device, the float type, and int8 or not.

The policy only: each function turns a validated setting (:class:`corolab.serving.config.ModelConfig`, whose
allowed values are :mod:`corolab.serving.choices`) and what this machine has into a decision, and refuses a
combination that cannot work with a message that names the option. The backend
(:mod:`corolab.serving.backends.hf`) applies the decisions.
"""

from __future__ import annotations

from corolab.serving.choices import Device, Dtype, Quantization, weights_of


def pick_device(device: Device) -> str:
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


def pick_dtype(dtype: Dtype, device: str):  # -> torch.dtype
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
    return getattr(torch, dtype)  # a validated Dtype (corolab.serving.choices): float32, bfloat16 or float16


def pick_quantization(quantize: Quantization, device: str, dtype: str) -> str:
    """``auto``: ``int8`` on a CPU in float32 (what ``--dtype auto`` picks there), ``none`` otherwise.

    Why int8 by default on a CPU: it runs a decode step 2-4x faster than float32 at every batch size
    (memory-bound at one stream, arithmetic-bound at many) and a greedy reply stays the same alone or in a batch,
    because every row has its own activation scale and the int32 sums are exact (:mod:`corolab.serving.backends.cpu.quantize`).
    It costs little quality once smoothed: on float32's own greedy replies the mean loss rose 0.3%
    (benchmarks/RESULTS.md, "Weight quantization"). ``none`` serves the model's float weights exactly.
    On a GPU bf16 is already fast and ``torch._int_mm`` has shape limits there, so int8 is a CPU path only;
    its scales and the layers between the matmuls compute in float32, so an explicit ``--dtype bfloat16`` or
    ``float16`` means no int8.
    ``int4`` (opt-in) stores the weights in 4 bits with a scale and an offset per 32 inputs: fewer bytes a step,
    so faster at one stream, at a cost in quality (:class:`~corolab.serving.backends.cpu.quantize.Int4Linear`).
    ``int8-nosmooth`` and ``int4-smooth`` (benchmarks only) turn the smoothing off for int8 and on for int4, to
    measure what it does.
    """
    if quantize == "auto":
        return "int8" if device == "cpu" and dtype == "float32" else "none"
    bits = weights_of(quantize)
    if bits != "none" and device != "cpu":
        raise ValueError(f"--quantize {bits} runs on a CPU only; on {device} use --quantize none (bf16 is fast there)")
    if bits != "none" and dtype != "float32":
        raise ValueError(f"--quantize {bits} computes in float32; drop --dtype {dtype} or use --quantize none")
    return quantize


__all__ = ["pick_device", "pick_dtype", "pick_quantization"]
