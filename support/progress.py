"""Progress bars for work a user waits on (simulating a data set, evaluation, calibration).

`progress(items, ...)` wraps an iterable in a `tqdm` bar on standard error when `show` is true
and standard error is a terminal; otherwise it returns the items untouched, so logs, pipes and
the tests see no bar. Library functions take `progress: bool = False`; the CLI passes
`not args.quiet`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def wants_bar(show: bool) -> bool:
    """A bar is drawn only when asked for and standard error is an interactive terminal."""
    return show and sys.stderr.isatty()


def progress(
    items: Iterable[T], *, show: bool, total: int | None = None, what: str = "", unit: str = "it"
) -> Iterator[T]:
    """`items`, with a progress bar named `what` counting `unit`s when `wants_bar(show)`."""
    if not wants_bar(show):
        yield from items
        return
    from tqdm import tqdm  # imported only when a bar is drawn: `dopant --help` stays quick

    with tqdm(items, total=total, desc=what, unit=unit, leave=False, file=sys.stderr) as bar:
        yield from bar


class Steps:
    """A bar over named steps of known count (a compile's stages): `done(name)` advances it and
    shows the step that finished. Draws nothing unless `wants_bar(show)`; `close()` removes it."""

    def __init__(self, total: int, *, show: bool, what: str = "") -> None:
        self._bar = None
        if wants_bar(show):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit="stage", leave=False, file=sys.stderr)

    def done(self, name: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(name, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
