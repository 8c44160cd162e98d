"""Forward pre-hooks that read or replace the inputs of chosen layers during one forward pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from dopant.compiler.models.modes import eval_mode
from dopant.support.errors import InputError

Layer = nn.Conv2d | nn.Linear


class Taps:
    """Forward pre-hooks on the layers. While `run(visit, call)` runs `call`, each layer's
    input goes to `visit(path, x)`, which may return a replacement; a layer that runs twice
    or not at all is an InputError. A context manager: entering puts the model in eval mode
    and adds the hooks, leaving removes them and restores every module's mode."""

    def __init__(self, model: nn.Module, modules: Mapping[str, Layer]):
        self.model, self.modules = model, modules
        self._visit: Callable[[str, Tensor], Tensor | None] | None = None
        self._seen: set[str] = set()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._modes = ExitStack()  # eval mode while entered

    def __enter__(self) -> Taps:
        self._modes.enter_context(eval_mode(self.model))
        for path, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(path)))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._modes.close()

    def _hook(self, path: str) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            visit, self._visit = self._visit, None  # the layer may run inside `visit`
            if visit is None:
                return None
            try:
                if path in self._seen:
                    raise InputError(
                        f"the layer '{path}' runs more than once in one forward pass (a shared "
                        "module), so its input has no single quantizer; leave it out of `layers`."
                    )
                self._seen.add(path)
                new = visit(path, args[0])
            finally:
                self._visit = visit
            return None if new is None else (new, *args[1:])

        return hook

    def run(self, visit: Callable[[str, Tensor], Tensor | None], call: Callable[[], Any]) -> Tensor:
        self._visit, self._seen = visit, set()
        try:
            out = call()
        finally:
            self._visit = None
        for path in self.modules:
            if path not in self._seen:
                raise InputError(
                    f"the layer '{path}' did not run in the model's forward pass; give layers "
                    "that compute the output."
                )
        if not isinstance(out, Tensor):
            raise InputError(
                f"bit sensitivity needs a model that returns one tensor, got {type(out)}."
            )
        return out
