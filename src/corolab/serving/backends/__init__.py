"""Model backends: ``fake`` (deterministic, instant, no torch) and Hugging Face causal LMs.

Imports are lazy: ``load_backend("fake")`` never imports torch or transformers, so the fake path (tests,
teaching, measuring serving overhead) starts in milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corolab.serving.backends.base import Backend


def load_backend(model: str | None = None, *, device: str = "auto", dtype: str = "auto", quantize: str = "auto",
                 attention: str = "exact", prefix_cache: bool = True, threads: int | None = None) -> Backend:
    """Return an unloaded backend (engines call ``backend.load()`` off the event loop).

    ``model=None`` is the embedded SmolLM2-135M-Instruct, ``"fake"`` the deterministic fake,
    ``"fake:0.05"`` the fake whose steps each take 50 ms, anything
    else a Hugging Face model id (from the local cache) or a local directory. ``prefix_cache`` (Hugging Face
    models) reuses the keys and values of the opening all prompts share (:mod:`corolab.serving.backends.prefix`);
    ``threads`` is torch's CPU threads for model work (:mod:`corolab.serving.backends.threads`); ``quantize`` is
    ``auto``, ``none`` or ``int8`` (:func:`corolab.serving.backends.hf.pick_quantization`); ``attention`` is ``exact``
    or ``batched`` (:mod:`corolab.serving.backends.llama_forward`).
    """
    if model is not None and (model == "fake" or model.startswith("fake:")):
        from corolab.serving.backends.fake import FakeBackend
        _, _, delay = model.partition(":")  # "fake:0.05" = every model step costs 50 ms
        return FakeBackend(step_delay=float(delay or 0))
    if model is None or model == "embedded":
        from corolab.serving.backends.embedded import EmbeddedBackend
        return EmbeddedBackend(device=device, dtype=dtype, quantize=quantize, attention=attention, prefix_cache=prefix_cache, threads=threads)
    from corolab.serving.backends.hf import HFBackend
    return HFBackend(model, device=device, dtype=dtype, quantize=quantize, attention=attention, prefix_cache=prefix_cache, threads=threads)


__all__ = ["load_backend"]
