"""Model backends: ``fake`` (deterministic, instant, no torch) and Hugging Face causal LMs.

Imports are lazy: ``load_backend("fake")`` never imports torch or transformers, so the fake path (tests,
teaching, measuring serving overhead) starts in milliseconds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from corolab.serving.config import ModelConfig

if TYPE_CHECKING:
    from corolab.serving.backends.base import Backend


def load_backend(source: ModelConfig | str | None = None, /, **overrides: Any) -> Backend:
    """Return an unloaded backend (engines call ``backend.load()`` off the event loop).

    ``source`` is a :class:`~corolab.serving.config.ModelConfig` (a ``ServeConfig`` is one), or just the model:
    ``None`` is the embedded SmolLM2-135M-Instruct, ``"fake"`` the deterministic fake, ``"fake:0.05"`` the fake
    whose steps each take 50 ms, anything else a Hugging Face model id (from the local cache) or a local
    directory. Any other setting is overridden by keyword (``load_backend(None, threads=1, quantize="none")``);
    the defaults are :class:`~corolab.serving.config.ModelConfig`'s, and it checks the result.
    """
    config = source if isinstance(source, ModelConfig) else ModelConfig(model=source)
    config = replace(config, **overrides).validate()
    model = config.model
    if model is not None and (model == "fake" or model.startswith("fake:")):
        from corolab.serving.backends.fake import FakeBackend
        _, _, delay = model.partition(":")  # "fake:0.05" = every model step costs 50 ms
        return FakeBackend(step_delay=float(delay or 0))
    if model is None or model == "embedded":
        from corolab.serving.backends.embedded import EmbeddedBackend
        return EmbeddedBackend(config)
    from corolab.serving.backends.hf import HFBackend
    return HFBackend(config)


__all__ = ["load_backend"]
