"""Where corolab keeps what it builds once per machine: the converted embedded model and the fused kernels.

A module of its own because both the embedded model (:mod:`corolab.serving.backends.embedded`) and the CPU
kernels' build (:mod:`corolab.serving.backends.cpu.kernels`) need it, and neither should import the other.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$COROLAB_CACHE``, else ``~/.cache/corolab``."""
    return Path(os.environ.get("COROLAB_CACHE") or Path.home() / ".cache" / "corolab")


__all__ = ["cache_root"]
