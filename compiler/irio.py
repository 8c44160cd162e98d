"""Reading and writing `qnn` IR text, with errors that carry file:line:col."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import ParseError, VerifyException

from dopant.dialects.context import make_context
from dopant.support.errors import InputError, IRError
from dopant.support.files import write_atomic


def verify(module: ModuleOp, where: str) -> None:
    """Verify `module`, naming the failing op instead of dumping the module (XDSL.md trap)."""
    try:
        module.verify()
    except VerifyException as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise IRError(f"IR does not verify {where}: {message}") from None


def parse_ir(text: str, filename: str = "<input>") -> ModuleOp:
    """Parse and verify IR text; a syntax error is an IRError naming file:line:col."""
    try:
        module = Parser(make_context(), text, filename).parse_module()
    except ParseError as error:
        raise IRError(f"{error.span.get_location()}: {error.msg}") from None
    verify(module, f"in {filename}")
    return module


def read_ir(path: str) -> ModuleOp:
    """Parse the IR in file `path` ('-' reads standard input)."""
    if path == "-":
        return parse_ir(sys.stdin.read(), "<stdin>")
    file = Path(path)
    if not file.is_file():
        raise InputError(
            f"IR file '{path}' does not exist; give a .mlir file written by "
            "`dopant import` or `dopant opt`."
        )
    return parse_ir(file.read_text(), path)


def ir_text(module: ModuleOp, generic: bool = False) -> str:
    stream = io.StringIO()
    Printer(stream=stream, print_generic_format=generic).print_op(module)
    return stream.getvalue() + "\n"


def write_ir(module: ModuleOp, path: str | None, generic: bool = False) -> None:
    """Write IR text to `path` atomically, or to standard output when `path` is None or '-'."""
    text = ir_text(module, generic)
    if path in (None, "-"):
        sys.stdout.write(text)
        return
    write_atomic(path, text)
