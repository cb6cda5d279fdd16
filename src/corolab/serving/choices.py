"""The allowed values of the serving stack's named settings, as ``Literal`` types.

Why a module of its own: the CLI builds its ``choices=`` from these (``typing.get_args``), the one validator
(:meth:`corolab.serving.config.ModelConfig.validate`) checks against them, and type checkers read them in every
signature, so a new device or engine is added here once. It imports nothing.
"""

from __future__ import annotations

from typing import Literal, get_args

Device = Literal["auto", "cpu", "cuda", "mps"]
"""Where the model runs; ``auto``: CUDA, then Apple's MPS, then the CPU."""

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
"""The model's float type; ``auto``: bfloat16 on CUDA, float32 elsewhere."""

Quantize = Literal["auto", "none", "int8", "int4"]
"""What ``--quantize`` offers; ``auto``: int8 on a CPU in float32, none elsewhere."""

Quantization = Literal[Quantize, "int8-nosmooth", "int4-smooth"]
"""What a backend accepts: ``--quantize``'s values, plus, for benchmarks, ``int8-nosmooth``
(int8 without smoothing) and ``int4-smooth`` (int4 with it)."""

Attention = Literal["exact", "batched"]
"""``exact``: attention row by row, a greedy reply is the same in any batch; ``batched``: one call, faster."""

KvCacheDtype = Literal["auto", "float16", "float32"]
"""What the KV cache stores; ``auto``: the model's dtype. ``float16`` halves the cache of a float32 model."""

EngineKind = Literal["naive", "threads", "batched"]
"""The three schedulers (:mod:`corolab.serving.engine`)."""

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def weights_of(quantization: str) -> str:
    """What a :data:`Quantization` stores the weights as: ``none``, ``int8`` or ``int4`` (a benchmark variant's
    ``-smooth`` or ``-nosmooth`` dropped), the one place that reads the variants' names."""
    return quantization.split("-")[0]


def choices(kind: object) -> tuple[str, ...]:
    """The values of a ``Literal`` type above, in order (nested ``Literal`` types are flattened)."""
    return tuple(get_args(kind))


__all__ = ["Attention", "Device", "Dtype", "EngineKind", "KvCacheDtype", "LogLevel", "Quantization", "Quantize",
           "choices", "weights_of"]
