"""What the soft choices share: hooks on a model that stay until `remove()` or a `with` block
ends."""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn


class Hooked(nn.Module):
    """A module of learnable choices that hooks into another model (`_handles`); `remove()`
    takes the hooks off (a subclass undoes anything else it did), `with` removes them at the
    end of the block, even on error."""

    def __init__(self) -> None:
        super().__init__()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Hooked:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Take the hooks off the model (the learned choices stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def parameter_key(name: str) -> str:
    """`name` (a module path, a decision) as a ParameterDict key: `_` for every character
    other than a letter or digit."""
    return "".join(c if c.isalnum() else "_" for c in name)
