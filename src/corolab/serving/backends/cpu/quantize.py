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


def row_codes(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's int8 codes and its largest magnitude (``amax``, [rows, 1]): the activation side of both
    :class:`Int8Linear` and :class:`Int4Linear`, and what the kernels' ``quantize_rows`` computes."""
    # Not torch.linalg.vector_norm(ord=inf): the same numbers, but 12x slower at 32 rows (measured, torch 2.13).
    amax = rows.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12)
    return (rows * (127.0 / amax)).round_().to(torch.int8), amax


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

    def kernel_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What the kernels' ``int8_linear`` takes after its input: weight, scales, weight sums, bias."""
        return self.weight_int8, self.scale, self.weight_sum, self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernels is not None:  # packed: only the kernel reads this layout (it is Int8Linear's arithmetic)
            return self._kernels.int8_linear(x, *self.kernel_args())
        rows = x.reshape(-1, self.in_features)
        q, amax = row_codes(rows)
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


INT4_GROUP = 32
"""Inputs per 4-bit group (the kernels' ``kInt4Group``): each group of 32 weights of an output has its own scale
and offset."""

INT4_RANGE_SHRINK = (1.0, 0.93, 0.86, 0.8)
"""Where a group's range may end, as fractions of its smallest and of its largest weight (each side on its own):
the pair whose 16 levels are nearest the weights (least squared error) wins. 1.0 clips nothing; less clips the
extreme weights and gives the rest finer steps. On the embedded model (smoothed, the 4-bit weights simulated in
float) the search took the teacher-forced loss of bench_quantize.py's measure from 1.25x float32's with the full
range to 1.21x."""


INT4_GROUP_BYTES = INT4_GROUP * 16 // 2 + 2 * 16 * 2
"""Bytes of one group of sixteen outputs in the kernels' layout: 256 of codes, then 16 float16 scales and 16
float16 offsets (the kernels' ``kInt4GroupBytes``)."""


def pack_int4(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Codes (0..15, [out, in]) with each group's float16 scale and offset ([out, in/32]) in the layout the kernels'
    ``int4_mm`` reads, [out/16, in/32, 320] bytes: per block of sixteen outputs and group of 32 inputs, the codes
    (byte (p, c, t) holds input 8 p + t of output c in its low nibble and input 8 p + 4 + t in its high one), then
    the sixteen scales, then the sixteen offsets. A block is then one stream, front to back."""
    n, k = codes.shape
    u = codes.to(torch.uint8).view(n // 16, 16, k // INT4_GROUP, 4, 2, 4).permute(0, 2, 3, 1, 4, 5)
    nibbles = (u[..., 0, :] | (u[..., 1, :] << 4)).reshape(n // 16, k // INT4_GROUP, -1)  # [blocks, groups, 256]

    def by_group(values: torch.Tensor) -> torch.Tensor:  # [out, groups] float16 -> [blocks, groups, 32] bytes
        return values.view(n // 16, 16, -1).transpose(1, 2).contiguous().view(torch.uint8)

    return torch.cat((nibbles, by_group(scale), by_group(offset)), dim=2).contiguous()


def unpack_int4(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`pack_int4` undone: the codes (uint8 0..15, [out, in]), the scales and the offsets (float16,
    [out, in/32])."""
    blocks, groups = packed.shape[:2]
    nibbles = packed[..., :256].reshape(blocks, groups, 4, 16, 4)
    halves = torch.stack((nibbles & 0x0F, nibbles >> 4), dim=4)  # [blocks, groups, 4, 16, 2, 4]
    codes = halves.permute(0, 3, 1, 2, 4, 5).reshape(blocks * 16, groups * INT4_GROUP)

    def per_output(part: torch.Tensor) -> torch.Tensor:  # [blocks, groups, 32] bytes -> [out, groups] float16
        return part.contiguous().view(torch.float16).transpose(1, 2).reshape(blocks * 16, groups)

    return codes, per_output(packed[..., 256:288]), per_output(packed[..., 288:])


def int4_codes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group of ``weight`` [..., groups, INT4_GROUP]: a float16 scale and offset, and codes 0..15 (uint8) with
    ``weight ~ code * scale + offset``; the range is the best of :data:`INT4_RANGE_SHRINK`'s pairs."""
    low, high = weight.amin(dim=-1), weight.amax(dim=-1)
    best = None
    for low_part in INT4_RANGE_SHRINK:
        for high_part in INT4_RANGE_SHRINK:
            start, end = low * low_part, high * high_part
            scale = ((end - start) / 15.0).to(torch.float16)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: codes 0
            offset = start.to(torch.float16)
            codes = ((weight - offset.float()[..., None]) / scale.float()[..., None]).round_().clamp_(0, 15)
            error = (codes * scale.float()[..., None] + offset.float()[..., None] - weight).square_().sum(dim=-1)
            if best is None:
                best = [scale, offset, codes, error]
                continue
            better = error < best[3]
            best = [torch.where(better, scale, best[0]), torch.where(better, offset, best[1]),
                    torch.where(better[..., None], codes, best[2]), torch.minimum(error, best[3])]
    return best[0], best[1], best[2].to(torch.uint8)


class Int4Linear(torch.nn.Module):
    """``--quantize int4``: weights in 4 bits, each group of :data:`INT4_GROUP` inputs of an output with a float16
    scale and offset (as llama.cpp's Q4_1 stores them), activations int8 per row (W4A8).

    Why. At one stream a decode step reads every weight once and waits on memory: 5 bits a weight (codes, scale
    and offset) is 0.62x the bytes of int8. The price is quality (RESULTS.md, "4-bit weights"). A reply is still
    the same alone or in any batch: each row is computed on its own, each group's integer sum is exact, and the
    groups add in one fixed order. The kernels compute this class's :meth:`forward` bit for bit.

    A group's share of an output: sum a (code * scale + offset) = scale * (sum a code) + offset * (sum a), for
    a row's int8 codes ``a``; both sums are integers, exact."""

    @staticmethod
    def fits(outputs: int, inputs: int) -> bool:
        """Whether a layer of this shape can be 4-bit: outputs in blocks of sixteen, inputs in whole groups."""
        return outputs % 16 == 0 and inputs % INT4_GROUP == 0

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        n, k = linear.out_features, linear.in_features
        if not self.fits(n, k):
            raise ValueError(f"4-bit layers need outputs in sixteens and inputs in {INT4_GROUP}s, not {n} x {k}")
        scale, offset, codes = int4_codes(linear.weight.detach().float().view(n, k // INT4_GROUP, INT4_GROUP))
        # Codes, scales and offsets in one buffer, the kernels' layout (pack_int4)
        self.register_buffer("weight_int4", pack_int4(codes.view(n, k), scale, offset))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.in_features, self.out_features = k, n
        self._kernels = None  # set by pack(): the kernels read this layout directly

    def pack(self, kernels) -> None:
        """Run through the kernels from now on (the layout is already theirs)."""
        self._kernels = kernels

    @property
    def on_kernels(self) -> bool:
        """Whether :meth:`pack` handed this layer to the kernels (otherwise its Python forward runs)."""
        return self._kernels is not None

    def kernel_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What the kernels' ``int8_linear`` takes after its input: the weight holds its own scales and offsets,
        so the int8 layer's scales and weight sums are empty."""
        return self.weight_int4, _EMPTY_FLOAT, _EMPTY_INT, self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernels is not None:
            return self._kernels.int8_linear(x, *self.kernel_args())
        rows = x.reshape(-1, self.in_features)
        q, amax = row_codes(rows)
        groups = self.in_features // INT4_GROUP
        a = q.float().view(-1, groups, INT4_GROUP)
        codes, scale, offset = unpack_int4(self.weight_int4)
        scale, offset = scale.float(), offset.float()
        # Each group's integer sums, in float32: every partial sum is an integer under 2**24, exact in any order.
        dots = torch.einsum("rgi,ngi->grn", a, codes.float().view(-1, groups, INT4_GROUP))
        sums = a.sum(dim=2)  # [rows, groups]
        out = torch.zeros(rows.shape[0], self.out_features)
        for g in range(groups):  # in group order, each product rounded then added: the kernel's order
            out.add_(dots[g] * scale[:, g])
            out.add_(sums[:, g, None] * offset[:, g])
        out.mul_(amax * (1.0 / 127.0))
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, W4A8, groups of {INT4_GROUP}"


_EMPTY_FLOAT = torch.empty(0)
_EMPTY_INT = torch.empty(0, dtype=torch.int32)
QUANTIZED = (Int8Linear, Int4Linear)
"""The quantized layer classes; LlamaForward's kernel path takes either."""


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

    def __init__(self, linears: list[torch.nn.Linear], layer: type = Int8Linear) -> None:
        super().__init__()
        stacked = torch.nn.Linear(linears[0].in_features, sum(lin.out_features for lin in linears), bias=False,
                                  dtype=linears[0].weight.dtype)
        with torch.no_grad():
            stacked.weight.copy_(torch.cat([lin.weight for lin in linears]))
        self.linear = layer(stacked)
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


def quantize_linears(model: torch.nn.Module, bits: int = 8) -> int:
    """Replace every ``nn.Linear`` of ``model`` (the LM head too, untied from the embedding) by int8 layers;
    returns how many. In a Llama-shaped model q/k/v and gate/up are fused (:class:`FusedInt8`). The input
    embedding is left as it is: a lookup, not a matmul, so rounding it to int8 would save memory but no time
    (:mod:`~corolab.serving.backends.cpu.embedding` stores it smaller only where that keeps every value).

    ``bits=4``: the layers inside the transformer blocks are :class:`Int4Linear` where their shape allows; the LM
    head stays int8, as llama.cpp keeps its output layer wider than Q4 (RESULTS.md measures why)."""

    def layer_class(outputs: int, inputs: int) -> type:
        return Int4Linear if bits == 4 and Int4Linear.fits(outputs, inputs) else Int8Linear

    count = 0
    for layer in getattr(getattr(model, "model", None), "layers", None) or []:
        for owner, names in ((getattr(layer, "self_attn", None), ("q_proj", "k_proj", "v_proj")),
                             (getattr(layer, "mlp", None), ("gate_proj", "up_proj"))):
            linears = [getattr(owner, name, None) for name in names]
            if not all(isinstance(lin, torch.nn.Linear) and lin.bias is None for lin in linears):
                continue
            group = FusedInt8(linears, layer_class(sum(lin.out_features for lin in linears), linears[0].in_features))
            owner.add_module("fused_" + "_".join(n.removesuffix("_proj") for n in names), group)
            for index, name in enumerate(names):
                setattr(owner, name, FusedPart(group, index))
            count += len(names)
    targets = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    for name in targets:
        linear = model.get_submodule(name)
        cls = Int8Linear if name == "lm_head" else layer_class(linear.out_features, linear.in_features)
        _swap(model, name, cls(linear))
    return count + len(targets)


def pack_linears(model: torch.nn.Module, kernels, int8: bool = True) -> int:
    """Pack every :class:`Int8Linear` of ``model`` whose shape the packed layout takes (outputs a multiple of 16,
    inputs of 4) for ``kernels`` (``int8=False``: leave them plain), and hand every :class:`Int4Linear` to the
    kernels; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, Int4Linear) or (
        int8 and isinstance(m, Int8Linear) and m.out_features % 16 == 0 and m.in_features % 4 == 0)]
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
