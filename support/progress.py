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
