"""Fused C++ kernels for the int8 path (``kernels.cpp``), built once per machine and cached.

Why. At one stream a decode step of the embedded model spent about as long issuing small torch calls from
Python as in its matmuls. ``int8_linear`` does a W8A8 layer (RMSNorm, quantize the rows, integer matmul,
dequantize, residual add) in one call instead of about twenty; ``attend_decode`` does a layer's rotary
embedding, cache write and attention in one; ``decode_layers`` runs a whole decode step's layers through
them in one call from Python. At one to four rows the matmul is a VNNI kernel of our own:
oneDNN's AMX gemm lays the weight out anew on every call, which at one row costs more than the matmul. On a
CPU with AVX512-VNNI and no AMX the weights are stored packed for our own kernel at every row count
(:func:`packed_layout`, ``pack_int8``).
``benchmarks/RESULTS.md`` has the measurements; ``tests/test_kernels.py`` what they promise: a row's numbers
are the same alone or in any batch, on any thread count.

How. ``torch.utils.cpp_extension.load`` compiles the file with the machine's C++ compiler the first time a
model loads in int8 (20-60 s), into ``$COROLAB_CACHE/kernels/``; later loads find it there. Where there is no
compiler, or ``COROLAB_KERNELS=0`` or ``COROLAB_PORTABLE=1`` is set, :func:`ops` returns ``None`` and the Python path runs: the same
model and the same promise, slower, with rounding that differs in the last bits. The build is guarded by a
file lock, so processes that start together build once.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("kernels.cpp")
_state: dict[str, object] = {}


def _flags() -> list[str]:
    """-O3 with the compiler free to vectorize, but never to fuse a multiply and an add into one rounding
    (``-ffp-contract=off``): that would change the numbers. x86-64-v3 (AVX2) where the machine has it.
    ``-fopenmp``: ``at::parallel_for`` is a header template that runs serially unless compiled with OpenMP.
    The library it links, ``libgomp.so.1``, is the one torch has already loaded (same name), so the process
    keeps one OpenMP runtime and one thread team per thread."""
    flags = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=x86-64-v3" if _has_avx2() else "-msse4.1")
    return flags


def _has_avx2() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in text and " fma" in text


def _build():  # -> torch.ops namespace
    import torch
    from filelock import FileLock
    from torch.utils import cpp_extension

    from corolab.serving.backends.cache_dir import cache_root

    # torch's builder runs `ninja` from PATH; the pinned one is installed beside this interpreter, which a
    # server started as `.venv/bin/python -m corolab serve` does not necessarily have on its PATH.
    here = str(Path(sys.executable).parent)
    if here not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
    flags = _flags()
    # The folder names what the build depends on: a new torch or other flags build anew.
    tag = f"torch{torch.__version__}-{'-'.join(f.strip('-') for f in flags[4:]) or 'generic'}".replace("+", "_")
    folder = cache_root() / "kernels" / tag
    folder.mkdir(parents=True, exist_ok=True)
    verbose = bool(os.environ.get("COROLAB_KERNELS_VERBOSE"))  # the compiler's command lines and messages
    with FileLock(str(folder / ".lock")):
        if not any(folder.glob("*.so")):
            print("corolab: building the fused int8 kernels (once per machine, under a minute)", file=sys.stderr)
        cpp_extension.load(name="corolab_kernels", sources=[str(SOURCE)], extra_cflags=flags,
                           extra_ldflags=["-fopenmp"], build_directory=str(folder), is_python_module=False,
                           verbose=verbose)
    return torch.ops.corolab


def has_vnni() -> bool:
    """Whether this CPU has AVX512 with VNNI, which the kernels' own matmuls (packed int8, 4-bit) need."""
    import torch

    caps = torch.cpu.get_capabilities()
    return all(caps.get(flag) for flag in ("avx512_f", "avx512_bw", "avx512_vnni"))


def packed_layout() -> bool:
    """Whether int8 weights should be stored packed for the kernels' own VNNI matmul (``pack_int8``) rather
    than plain for oneDNN's ``_int_mm``: on x86 CPUs with AVX512-VNNI and without AMX. There it was measured
    faster at every row count a decode step has, and its LM head 3x faster at one row (RESULTS.md, "A packed
    weight layout"); on a CPU with AMX, oneDNN's tiles are faster for prefill, so the plain layout stays.
    ``COROLAB_PACKED=0`` keeps the plain layout anyway (``benchmarks/bench_packed.py`` loads both)."""
    import torch

    if os.environ.get("COROLAB_PACKED", "1") == "0":
        return False

    return has_vnni() and not torch.cpu.get_capabilities().get("amx_int8")


def ops():  # -> torch.ops.corolab | None
    """The loaded kernels, built on first use; ``None`` where they cannot be (the Python path runs)."""
    if "ops" in _state:
        return _state["ops"]
    from corolab.serving.backends.cpu.quantize import portable  # the switch is decided there, for both paths

    result = None
    if portable():
        print("corolab: COROLAB_PORTABLE=1: fused kernels off; using the Python path", file=sys.stderr)
    elif os.environ.get("COROLAB_KERNELS", "1") != "0":
        try:
            result = _build()
        except Exception as exc:  # no compiler, no ninja, a failed build: the Python path serves the same model
            first = (str(exc).splitlines() or [""])[0][:200]
            print(f"corolab: fused kernels unavailable ({type(exc).__name__}: {first}); using the Python path "
                  "(COROLAB_KERNELS_VERBOSE=1 shows the build)", file=sys.stderr)
    _state["ops"] = result
    return result
