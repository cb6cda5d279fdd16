"""Int8 weights and int8 activations for a model's linear layers (W8A8), for speed on a CPU.

Why this scheme. At one stream a step of a small model is bound by reading its weights from memory: float32
reads 4 bytes per weight, int8 one. At many streams it is bound by arithmetic: int8 dot products with int32
sums (``torch._int_mm``, VNNI on x86) do four times the work per instruction of float32. Both are measured in
``benchmarks/bench_quantize.py``.

Why per token. Each row's activations get their own scale (its largest magnitude maps to 127), and the int32
sums are exact, so a row's result does not depend on which other rows share the batch: a greedy reply is the
same alone or in a crowd, the property the book relies on (``tests/test_engines.py``). Schemes with one scale
per batch (``torch.ao.quantization.quantize_dynamic``) give that up: one loud request changes every other
request's rounding.

Why smoothing first. Activations have a few loud channels; with one scale per row they squeeze every other
channel into a few int8 levels. SmoothQuant (Xiao et al., 2023) moves part of each channel's range from the
activation into the weight: ``x W = (x / s) (s W)``. Where the activation comes out of an RMSNorm or out of
``up_proj``, dividing by ``s`` folds into that weight, so the float model is unchanged and no op is added.
The factors come from one forward pass over a fixed calibration text at load time. Measured on SmolLM2-135M
(``benchmarks/bench_quantize.py``): without smoothing, int8 raised the mean loss of float32's own greedy
replies by 4%; with it (alpha 0.5), by 0.3%.

Weights are quantized once, per output channel, symmetric. torchao offers the same scheme
(``Int8DynamicActivationInt8WeightConfig``), but in eager mode it ran at 0.37x-0.89x float32 here because it
expects ``torch.compile`` to fuse its steps; these few eager ops run at 3-5x (see RESULTS.md).
"""

from __future__ import annotations

import os
import sys
import threading

import torch

EXACT_K = 1024
"""Inner-dimension chunk of the portable integer matmul: 1024 * 127 * 127 < 2**24, so every partial sum of a
chunk is an integer that float32 holds exactly, in any summation order."""
_mm_state: dict[str, object] = {}


def portable() -> bool:
    """``COROLAB_PORTABLE=1``: use only the paths every machine has (no fused kernels, no ``torch._int_mm``)."""
    return os.environ.get("COROLAB_PORTABLE", "0") == "1"


def int_mm_portable(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch._int_mm(a, b)`` (int8 times int8, int32 sums) through float32 matmuls, chunked by
    :data:`EXACT_K`: the same int32 result bit for bit, on any CPU, slower."""
    out = None
    for start in range(0, a.shape[1], EXACT_K):
        part = torch.mm(a[:, start:start + EXACT_K].float(), b[start:start + EXACT_K].float()).to(torch.int32)
        out = part if out is None else out.add_(part)
    return out


def _pick_int_mm():
    if portable():
        print("corolab: COROLAB_PORTABLE=1: int8 matmuls without torch._int_mm (exact, slower)", file=sys.stderr)
        return int_mm_portable
    try:  # some CPUs' torch builds lack it; probe once with a small product and compare
        a, b = torch.ones(2, 64, dtype=torch.int8), torch.ones(64, 8, dtype=torch.int8)
        if torch.equal(torch._int_mm(a, b), int_mm_portable(a, b)):
            return torch._int_mm
        reason = "a wrong result"
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable here
        reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
    print(f"corolab: torch._int_mm unavailable on this CPU ({reason}); int8 matmuls use float32 (exact, slower)",
          file=sys.stderr)
    return int_mm_portable


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 (m, k) times int8 (k, n) with exact int32 sums: ``torch._int_mm`` where it works, else portable."""
    mm = _mm_state.get("mm")
    if mm is None:
        mm = _mm_state["mm"] = _pick_int_mm()
    return mm(a, b)


class Int8Linear(torch.nn.Module):
    """A drop-in for ``torch.nn.Linear`` (weights int8 per output channel, activations int8 per row)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        # Stored (out, in) and used through its transpose: torch._int_mm on a CPU is faster with this layout.
        self.register_buffer("weight_int8", (weight / scale[:, None]).round().to(torch.int8))
        # The row's scale is amax/127; folding the weight's 1/127 in here saves an op per call.
        self.register_buffer("scale", (scale / 127.0).to(linear.weight.dtype))
        # Each output's weight sum, for the fused kernel's VNNI path (corolab.serving.backends.cpu.kernels): 4 bytes an output.
        self.register_buffer("weight_sum", self.weight_int8.sum(dim=1, dtype=torch.int32))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._kernels = None  # set by pack(): the weight is then in the kernels' packed layout

    def pack(self, kernels) -> None:
        """Store the weight in the layout the fused kernels' VNNI matmul reads (``kernels.pack_int8``) instead
        of the plain one, and run through those kernels from now on: the same numbers, bit for bit, and no
        second copy of the weight. :func:`corolab.serving.backends.cpu.kernels.packed_layout` decides where."""
        self.weight_int8 = kernels.pack_int8(self.weight_int8)
        self._kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernels is not None:  # packed: only the kernel reads this layout (it is Int8Linear's arithmetic)
            return self._kernels.int8_linear(x, self.weight_int8, self.scale, self.weight_sum, self.bias)
        rows = x.reshape(-1, self.in_features)
        # Not torch.linalg.vector_norm(ord=inf): the same numbers, but 12x slower at 32 rows (measured, torch 2.13).
        amax = rows.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12)
        q = (rows * (127.0 / amax)).round_().to(torch.int8)
        # int32 sums to float first, then one in-place multiply: the int32 tensor times a float one goes
        # through type promotion, 5x slower at 2 threads (measured at 496 x 3072, torch 2.13; 1.2x at one thread).
        # The same numbers as that product, bit for bit. Not two multiplies (by amax, then by scale): their
        # rounding differs by one unit in the last place, and that alone moved the model's teacher-forced
        # loss by 3% (benchmarks/bench_quantize.py's quality measure is that sensitive).
        out = int_mm(q, self.weight_int8.t()).float().mul_(amax * self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, W8A8 per token"


CALIBRATION = [
    "Hello! Can you help me write a short poem about the sea?",
    "Explain how a hash map works, step by step, with an example in Python.",
]
"""User messages whose activations set the smoothing factors. Fixed text: the same model quantizes the same
way on every machine, so replies are reproducible."""


def _input_absmax(model: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each linear layer's largest input magnitude per input channel, over ``batches`` of token ids."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            peak = inputs[0].reshape(-1, inputs[0].shape[-1]).abs().amax(0).float()
            seen[name] = torch.maximum(seen[name], peak) if name in seen else peak
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear)]
    try:
        with torch.inference_mode():
            for ids in batches:
                model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _factors(act_max: torch.Tensor, linears: list[torch.nn.Linear], alpha: float) -> torch.Tensor:
    weight_max = torch.stack([lin.weight.detach().abs().amax(0).float() for lin in linears]).amax(0)
    return (act_max.clamp(min=1e-5) ** alpha / weight_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)


def smooth(model: torch.nn.Module, batches: list[torch.Tensor], alpha: float = 0.5) -> int:
    """Fold SmoothQuant factors into a Llama-shaped model (``model.model.layers[i]`` with ``input_layernorm``,
    ``self_attn.{q,k,v}_proj``, ``post_attention_layernorm``, ``mlp.{gate,up,down}_proj``: Llama, Mistral,
    Qwen2, SmolLM). Returns how many layers were smoothed; 0 for a model of another shape, left as it was."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    needed = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
    if layers is None or not all(hasattr(layer, name) for layer in layers for name in needed):
        return 0
    names = {id(module): name for name, module in model.named_modules()}
    peaks = _input_absmax(model, batches)
    with torch.no_grad():
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            for norm, linears in ((layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj]),
                                  (layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])):
                s = _factors(peaks[names[id(linears[0])]], linears, alpha)
                norm.weight.div_(s.to(norm.weight.dtype))
                for lin in linears:
                    lin.weight.mul_(s.to(lin.weight.dtype))
            s = _factors(peaks[names[id(mlp.down_proj)]], [mlp.down_proj], alpha)
            mlp.up_proj.weight.div_(s[:, None].to(mlp.up_proj.weight.dtype))  # down's input = act(gate) * up
            mlp.down_proj.weight.mul_(s.to(mlp.down_proj.weight.dtype))
    return len(layers)


class FusedInt8(torch.nn.Module):
    """Several linear layers that read the same input (q, k, v; gate, up) as one :class:`Int8Linear` over their
    stacked weights: the input is quantized once and one matmul does the work of three. Each original layer is
    replaced by a :class:`FusedPart`; the first part called computes all outputs, the others reuse them."""

    def __init__(self, linears: list[torch.nn.Linear]) -> None:
        super().__init__()
        stacked = torch.nn.Linear(linears[0].in_features, sum(lin.out_features for lin in linears), bias=False,
                                  dtype=linears[0].weight.dtype)
        with torch.no_grad():
            stacked.weight.copy_(torch.cat([lin.weight for lin in linears]))
        self.linear = Int8Linear(stacked)
        self.sizes = [lin.out_features for lin in linears]
        # Per thread: the threads engine runs several forward passes on one model at once, and a shared
        # "last input" let one thread's q/k/v come from another's. The input is held, so no other tensor can
        # take its identity.
        self._last = threading.local()

    def compute(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All parts' outputs for ``x``, uncached (LlamaForward calls this once per layer)."""
        return self.linear(x).split(self.sizes, dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        last = self._last
        if getattr(last, "input", None) is not x:
            last.outputs = self.compute(x)
            last.input = x
        return last.outputs


class FusedPart(torch.nn.Module):
    """Stands where one of a :class:`FusedInt8`'s layers stood and returns that layer's slice of its output."""

    def __init__(self, group: FusedInt8, index: int) -> None:
        super().__init__()
        self.group = [group]  # a list, so the group is not registered (and counted) once per part
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group[0](x)[self.index]


def _swap(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def quantize_linears(model: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` (the LM head too, untied from the embedding) by int8 layers;
    returns how many. In a Llama-shaped model q/k/v and gate/up are fused (:class:`FusedInt8`). The input
    embedding stays in its float dtype: a lookup, not a matmul, so int8 would save memory but no time."""
    count = 0
    for layer in getattr(getattr(model, "model", None), "layers", None) or []:
        for owner, names in ((getattr(layer, "self_attn", None), ("q_proj", "k_proj", "v_proj")),
                             (getattr(layer, "mlp", None), ("gate_proj", "up_proj"))):
            linears = [getattr(owner, name, None) for name in names]
            if not all(isinstance(lin, torch.nn.Linear) and lin.bias is None for lin in linears):
                continue
            group = FusedInt8(linears)
            owner.add_module("fused_" + "_".join(n.removesuffix("_proj") for n in names), group)
            for index, name in enumerate(names):
                setattr(owner, name, FusedPart(group, index))
            count += len(names)
    targets = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    for name in targets:
        _swap(model, name, Int8Linear(model.get_submodule(name)))
    return count + len(targets)


def pack_linears(model: torch.nn.Module, kernels) -> int:
    """Pack every :class:`Int8Linear` of ``model`` whose shape the packed layout takes (outputs a multiple of 16,
    inputs of 4) for ``kernels``; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)
              and m.out_features % 16 == 0 and m.in_features % 4 == 0]
    for layer in layers:
        layer.pack(kernels)
    return len(layers)


def release_file_mapping(model: torch.nn.Module) -> None:
    """Give the float tensors that remain (embedding, norms) their own memory, so the mapped checkpoint file
    can be unmapped, then hand freed memory back to the OS.

    Why: transformers maps the safetensors file into memory and the weights are views of that mapping. After
    quantizing, the embedding alone kept the whole mapping alive, and every page the quantizer had read
    stayed resident: measured, the embedded model's process held 1,025 MiB after loading in int8 and 620 MiB
    after this (float32: 900 MiB once served)."""
    import gc

    from corolab.serving.backends.cpu.allocator import return_freed_memory

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype.is_floating_point:
                tensor.data = tensor.data.clone()
    gc.collect()
    return_freed_memory()
