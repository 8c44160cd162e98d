"""Reading and writing `qnn` IR text, with errors that carry file:line:col.

Two guards stand in front of xDSL's parser (0.75) for text that was cut short or edited by hand;
both were found by fuzzing `dopant opt`, and both keep a correct file's parse as it was:

- An unterminated string literal. The lexer matches a string with the regex
  `"(?:[^"\\\\\\n\\v\\f]+|\\\\(?:["nt\\\\]|[0-9A-Fa-f]{2}))*"`. When the closing quote is missing
  (a file cut inside a hex weight blob `dense<"0x...`), the nested quantifier `(?:[^...]+)*`
  tries every way to split the run of characters before giving up: the time doubles with each
  character (24 take a second), so a cut blob never finishes. `_check_string_literals` finds
  such a literal first, in linear time, and names where it starts.
- A hex dense literal whose byte count does not fit its type. xDSL counts the elements as
  bytes // element size, so a blob one byte too long parses, and fails later and far from the
  text (`ValueError: Buffer length ... not product of ...` when printed or read).
  `_CheckedParser` refuses it at its line and column.
"""

from __future__ import annotations

import io
import math
import re
import sys
from pathlib import Path

from xdsl.dialects.builtin import (
    AnyDenseElement,
    DenseIntOrFPElementsAttr,
    ModuleOp,
    RankedStructure,
)
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import ParseError, VerifyException
from xdsl.utils.lexer import Input, Span

from dopant.dialects.context import make_context
from dopant.support.errors import InputError, IRError
from dopant.support.files import write_atomic

# A string literal in the language of xDSL's lexer (plain characters, and the escapes \" \n \t
# \\ and two hex digits) with its closing quote optional. Unrolled, each step takes a whole plain
# run or one escape, and as the quote is optional the match never backtracks; group `close` is
# empty when the literal is not closed. Only for literals with a backslash: `_string_end` checks
# the others with `str.find`, ten times faster.
_STRING = re.compile(r'"[^"\\\n\v\f]*(?:\\(?:["nt\\]|[0-9A-Fa-f]{2})[^"\\\n\v\f]*)*(?P<close>")?')

# The first dialect-qualified name on a line (`qnn.constant`, or `"qnn.constant"` in the generic
# form): the op that a dense literal on that line belongs to.
_OP_NAME = re.compile(r'(?:^|[\s="])([A-Za-z_][\w$]*\.[\w$.]+)')


def _location(text: str, filename: str, position: int) -> str:
    """`file:line:col` of `position` in `text`, counted as xDSL counts them (from 1)."""
    return str(Span(position, position, Input(text, filename)).get_location())


def _unclosed_string_message(text: str, stop: int) -> str:
    """Why a string literal ends at `stop` without its closing quote, and what to do."""
    if stop >= len(text):
        return (
            "the string literal that starts here is not closed before the end of the file, "
            "so the file looks cut short; write it again (`dopant import`, `dopant opt -o`) "
            "or close the string with '\"'."
        )
    if text[stop] == "\\":
        escape = text[stop : stop + 2].splitlines()[0]
        return (
            f"the string literal that starts here holds the escape '{escape}', which is none of "
            '\\" \\n \\t \\\\ or \\ and two hex digits; correct the escape.'
        )
    return (
        "the string literal that starts here is not closed on its line (a string cannot span "
        "lines); add the closing '\"' or remove the stray one."
    )


def _find(text: str, sub: str, start: int, stop: int | None = None) -> int:
    """`text.find`, answering `stop` (or the text's length) when `sub` is not there."""
    end = len(text) if stop is None else stop
    found = text.find(sub, start, end)
    return end if found < 0 else found


def _next_string(text: str, position: int) -> int:
    """Where the next string literal at or after `position` starts (-1: none), past comments."""
    while (quote := text.find('"', position)) >= 0:
        comment = text.find("//", position, quote)
        if comment < 0:
            return quote
        position = _find(text, "\n", comment) + 1
    return -1


def _string_end(text: str, start: int, filename: str) -> int:
    """Where the string literal starting at `start` ends; an IRError when it is not closed.

    A literal without a backslash (a name, a hex blob of megabytes) is checked with `str.find`
    at memory speed, closed or not; one with a backslash goes through the exact `_STRING`.
    """
    line_end = _find(text, "\n", start)
    close = _find(text, '"', start + 1, line_end)
    if _find(text, "\\", start + 1, close) < close:
        return _escaped_string_end(text, start, filename)
    stop = min(close, *(_find(text, odd, start + 1, close) for odd in "\v\f"))
    if stop < len(text) and text[stop] == '"':
        return stop + 1
    raise IRError(f"{_location(text, filename, start)}: {_unclosed_string_message(text, stop)}")


def _escaped_string_end(text: str, start: int, filename: str) -> int:
    """`_string_end` for a literal with a backslash, by the exact regex."""
    match = _STRING.match(text, start)
    assert match is not None, "_STRING matches any text that starts with a quote"
    if match.group("close") is not None:
        return match.end()
    where = _location(text, filename, start)
    raise IRError(f"{where}: {_unclosed_string_message(text, match.end())}")


def _check_string_literals(text: str, filename: str) -> None:
    """Refuse a string literal without its closing quote before xDSL's lexer sees it.

    Why: the lexer's regex backtracks exponentially on such a literal (module docstring).
    """
    position = 0
    while (start := _next_string(text, position)) >= 0:
        position = _string_end(text, start, filename)


def _op_on_line(text: str, position: int) -> str:
    """The op named on the line of `position`, to say whose literal is at fault."""
    line_start = text.rfind("\n", 0, position) + 1
    found = _OP_NAME.search(text, line_start, position)
    return f"op '{found.group(1)}'" if found else "an op"


class _CheckedParser(Parser):
    """xDSL's parser, refusing a hex dense literal whose byte count does not fit its type."""

    def parse_dense_int_or_fp_elements_attr(
        self, type: RankedStructure[AnyDenseElement] | None
    ) -> DenseIntOrFPElementsAttr:
        """Parse as xDSL does, then compare the bytes with the type (xDSL rounds them down)."""
        start = self.pos
        attr = super().parse_dense_int_or_fp_elements_attr(type)
        element_bytes = attr.get_element_type().compile_time_size
        expected = math.prod(attr.get_shape()) * element_bytes
        if len(attr.data.data) == expected:
            return attr
        text = self.lexer.input.content
        self.raise_error(
            f"the dense literal of {_op_on_line(text, start)} holds {len(attr.data.data)} "
            f"bytes, but its type {attr.get_type()} needs {expected} ({expected // element_bytes}"
            f" elements of {element_bytes} bytes); the hex blob was cut or edited, so write "
            "the file again or correct the blob or the type.",
            at_position=start,
            end_position=self.pos,
        )


def verify(module: ModuleOp, where: str) -> None:
    """Verify `module`, naming the failing op instead of dumping the module (XDSL.md trap)."""
    try:
        module.verify()
    except VerifyException as error:
        raise IRError(f"IR does not verify {where}: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    """An exception's first line: xDSL appends the whole module to a verifier's message."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def parse_ir(text: str, filename: str = "<input>") -> ModuleOp:
    """Parse and verify IR text; a syntax error is an IRError naming file:line:col."""
    _check_string_literals(text, filename)
    parser = _CheckedParser(make_context(), text, filename)
    try:
        module = parser.parse_module()
    except ParseError as error:
        raise IRError(f"{error.span.get_location()}: {error.msg}") from None
    except VerifyException as error:
        # An attribute verifies as the parser builds it, and its error has no location: the
        # parser stands on the token after that attribute.
        where = _location(text, filename, parser.pos)
        raise IRError(
            f"{where}: an attribute of {_op_on_line(text, parser.pos)} that ends just before "
            f"here is invalid: {_first_line(error)}"
        ) from None
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
