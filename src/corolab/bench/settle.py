"""Timing claims in the book's cells: checked, measured again when noise flipped them, never a failure.

A cell of the book may assert what is structural: counts, errors, order, who waited for whom, and lower
bounds that sleeps guarantee (a reply made of five 20 ms steps cannot arrive in less than 100 ms). A claim
about a measured time or ratio ("four users get 2.5 times the tokens/s of one") is different: a busy
machine can flip it however true it is, and one flipped claim must not fail the build of a whole book.

``expect(claims)`` checks such claims and prints a warning naming each one that did not hold.
``await settle(measure, claims)`` measures again, up to ``rounds`` times, until every claim holds, and
warns only when the last round still disagrees. Both return whether the claims held, so a cell can go
on (or say "not checked") either way.

A claim is a ``{text: bool}`` entry: the text is what the reader sees in the warning.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

WARNING = "WARNING (a busy machine, not a failure): "


def _failed(claims: Mapping[str, bool]) -> list[str]:
    return [text for text, held in claims.items() if not held]


def expect(claims: Mapping[str, bool], *, context: str = "") -> bool:
    """Check timing claims: silent when all hold; otherwise print which did not, and return False."""
    failed = _failed(claims)
    if failed:
        where = f" {context}" if context else ""
        print(f"{WARNING}{len(failed)} of {len(claims)} timing claims{where} did not hold on this run:")
        for text in failed:
            print(f"  - {text}")
        print("  The measurement was disturbed; run the cell again on a quieter machine.")
    return not failed


async def settle(measure: Callable[[], Any | Awaitable[Any]],
                 claims: Callable[[Any], Mapping[str, bool]], *,
                 rounds: int = 3, context: str = "") -> tuple[Any, bool]:
    """Measure until every claim about the result holds, at most ``rounds`` times.

    Returns ``(result, held)``: the last round's result, and whether its claims held. Each round that
    disagrees is reported in one line; after the last, ``expect`` prints the warning.
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    for round_ in range(1, rounds + 1):
        result = measure()
        if inspect.isawaitable(result):
            result = await result
        checked = claims(result)
        failed = _failed(checked)
        if not failed:
            if round_ > 1:
                print(f"round {round_}: every timing claim held")
            return result, True
        if round_ < rounds:
            print(f"round {round_}: {'; '.join(failed)} did not hold: measuring again")
    return result, expect(checked, context=context)
