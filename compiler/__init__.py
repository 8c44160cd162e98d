"""dopant.compiler: the front door (frontend, passes and pipelines, driver, CLI).

`dopant.compiler.compile(model, example_inputs, target=..., calibration=...)` compiles a torch
model to an accelerator binary; it is imported on first use, so `import dopant.compiler` stays
cheap for the CLI.
"""

from __future__ import annotations

from typing import Any

_DRIVER = (
    "compile",
    "compile_module",
    "quantize_network",
    "latency",
    "CompiledModel",
    "CompileError",
    "STAGES",
)


def __getattr__(name: str) -> Any:
    if name in _DRIVER:
        from dopant.compiler import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'dopant.compiler' has no attribute '{name}'")
