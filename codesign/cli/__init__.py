"""The co-design commands: the main job (`dopant demo`), `dopant groups`, `dopant prune`,
`dopant codesign`, `dopant progressive`, `dopant ptq-kd`, `dopant sweep` and `dopant report`.

Registered through the `dopant.commands` entry point (pyproject.toml), so the compiler's CLI
finds them without importing codesign.
"""

from __future__ import annotations

from dopant.codesign.cli import loop, progressive, prune, ptqkd, sweep
from dopant.compiler.cli.options import Command


def register(command: Command) -> None:
    """Add the co-design commands to the CLI."""
    prune.register(command)
    loop.register(command)
    progressive.register(command)
    ptqkd.register(command)
    sweep.register(command)
