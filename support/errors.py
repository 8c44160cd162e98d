"""The errors dopant raises for bad input. Each message names the thing at fault and what to do.

They live at the bottom of the import graph (no xDSL, no torch) so every layer can raise them and
the CLI can print any of them as one line.
"""

from __future__ import annotations


class DopantError(Exception):
    """Bad input or a failed stage; the message is a full sentence meant for the user."""


class UnsupportedOpsError(DopantError):
    """A model uses ops dopant cannot import; lists every one with its module path."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        listed = "; ".join(f"{path}: {what}" for path, what in problems)
        super().__init__(
            f"the model uses {len(problems)} unsupported op(s): {listed}. Replace them with "
            "supported layers (`dopant ops` lists them) or remove them before importing."
        )


class InputError(DopantError):
    """Inputs (tensors, shapes, files, options) that do not fit what was asked."""


class PipelineError(DopantError):
    """A pass pipeline that cannot be parsed or a pass that failed."""


class ExecutionError(DopantError):
    """IR that verifies but breaks the integer contract while it runs (an overflow, say)."""


class IRError(DopantError):
    """IR text that does not parse or verify; the message carries file:line:col or the op."""


class DopantWarning(UserWarning):
    """Something the user should know that does not stop the work (an untrained model, a bit
    width the machine runs wider); the CLI prints each as one `dopant: warning:` line."""
