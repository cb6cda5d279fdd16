"""Inputs for graded tests, drawn from the ``rng`` fixture (the grader's seed for this run).

Why a module: several labs need the same small pieces (distinct words to name clients, tasks or paths),
and a lab's tests should read as its spec, not as a copy of a helper.
"""

from __future__ import annotations

import random
import string


def words(rng: random.Random, k: int) -> list[str]:
    """``k`` different short lowercase words drawn from ``rng``."""
    found: list[str] = []
    while len(found) < k:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 7)))
        if word not in found:
            found.append(word)
    return found
