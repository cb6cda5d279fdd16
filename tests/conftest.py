"""Shared fixtures. The real model loads at most once per test session (tests marked ``model``)."""

from __future__ import annotations

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "wheel: builds the wheel and runs corolab from a clean venv (deselect: -m 'not wheel')")


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2 backend, loaded (converted first if this machine never did)."""
    from corolab.serving.backends import load_backend

    backend = load_backend(None)
    backend.load()
    return backend
