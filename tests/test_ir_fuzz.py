"""Malformed IR text is refused fast, with `dopant: error:` and where: never a hang, never a bug.

A fuzz run (issue 11) sent mutated LeNet-5 IR through `dopant opt`: a file cut inside a hex
weight blob hung in xDSL's lexer for minutes, and a blob one byte too long ended in an internal
ValueError. Here a seeded mutator does the same to a tiny float network and its quantized form:
each case must finish within `CASE_LIMIT_S` and either pass or print one line that names the file
and a line:col or an op. A hang is cut by a timer signal, so it fails instead of stalling.
"""

from __future__ import annotations

import random
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import numpy as np
import pytest

from dopant.compiler.calibrate import calibrate
from dopant.compiler.cli import main
from dopant.compiler.irio import ir_text, parse_ir, read_ir
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn import ConstantOp
from dopant.support.errors import IRError

SEED = 11
CASES_PER_MUTATION = 6
# A case takes ~0.1 s on a loaded 2-core machine; an unguarded cut blob of 40 hex digits, days.
CASE_LIMIT_S = 2.0
# Past this the timer interrupts the case (xDSL's regex loop checks for signals).
HARD_STOP_S = 6.0

# Shortest run of hex digits left after a cut inside a blob: 2^40 steps for the old lexer.
MIN_CUT_DIGITS = 40

BLOB = re.compile(r'dense<"0x(?P<hex>[0-9A-F]*)"')
NUMBER = re.compile(r"\b\d+\b")
ELEMENT_TYPE = re.compile(r"\b(?:f16|f32|f64|bf16|[su]?i\d+)\b")
WORD = re.compile(r"\b[a-z_][a-z_0-9.]*\b")
# What a refusal must carry besides the file name: a line:col, or the op at fault.
WHERE = re.compile(r":\d+:\d+: |\b(?:qnn|func|builtin)\.[a-z_0-9]+")


def _blob(shape: tuple[int, ...], rng: np.random.Generator) -> str:
    """Random f32 weights as the hex the printer writes for a large constant."""
    return rng.uniform(-0.5, 0.5, shape).astype("<f4").tobytes().hex().upper()


def _float_ir(rng: np.random.Generator) -> str:
    """conv-batchnorm-relu-pool-linear on 8x8 inputs, with weights in hex blobs (no torch)."""
    return f"""builtin.module {{
  func.func @forward(%x: tensor<1x1x8x8xf32>) -> tensor<1x10xf32> {{
    %w0 = qnn.constant dense<"0x{_blob((4, 1, 3, 3), rng)}"> : tensor<4x1x3x3xf32> at "0.weight"
    %b0 = qnn.constant dense<[-0.19, 0.28, 0.14, 0.16]> : tensor<4xf32> at "0.bias"
    %c = qnn.conv2d %x, %w0, %b0 stride [1, 1] pad [0, 0, 0, 0] dilation [1, 1] groups 1 at "0" : (tensor<1x1x8x8xf32>, tensor<4x1x3x3xf32>, tensor<4xf32>) -> tensor<1x4x6x6xf32>
    %g = qnn.constant dense<[1.0, 0.5, 2.0, 1.5]> : tensor<4xf32> at "1.weight"
    %be = qnn.constant dense<[0.0, 0.1, -0.1, 0.2]> : tensor<4xf32> at "1.bias"
    %m = qnn.constant dense<[0.0, 0.1, 0.2, 0.3]> : tensor<4xf32> at "1.running_mean"
    %v = qnn.constant dense<1.0> : tensor<4xf32> at "1.running_var"
    %n = qnn.batch_norm %c, %g, %be, %m, %v eps 1.000000e-05 at "1" : (tensor<1x4x6x6xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<1x4x6x6xf32>
    %r = qnn.relu %n at "2" : tensor<1x4x6x6xf32>
    %p = qnn.max_pool2d %r kernel [2, 2] stride [2, 2] pad [0, 0, 0, 0] dilation [1, 1] at "3" : tensor<1x4x6x6xf32> -> tensor<1x4x3x3xf32>
    %f = qnn.reshape %p at "4" : tensor<1x4x3x3xf32> -> tensor<1x36xf32>
    %w5 = qnn.constant dense<"0x{_blob((10, 36), rng)}"> : tensor<10x36xf32> at "5.weight"
    %b5 = qnn.constant dense<"0x{_blob((10,), rng)}"> : tensor<10xf32> at "5.bias"
    %y = qnn.linear %f, %w5, %b5 at "5" : (tensor<1x36xf32>, tensor<10x36xf32>, tensor<10xf32>) -> tensor<1x10xf32>
    func.return %y : tensor<1x10xf32>
  }}
}}
"""


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    """The float IR and its quantized form (folded, calibrated on noise, 8-bit)."""
    rng = np.random.default_rng(SEED)
    text = _float_ir(rng)
    module = parse_ir(text)
    run_pipeline(module, "fold-batchnorm,fuse-activation")
    calibrate(module, rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    run_pipeline(module, "quantize")
    return {"float": text, "quantized": ir_text(module)}


# --- mutations: each takes the text and a seeded generator, and returns the mutated text ----


def _replace_match(text: str, pattern: re.Pattern[str], rng: random.Random, new: str) -> str:
    """Replace one random match of `pattern` in `text` by `new` (the text if none matches)."""
    found = list(pattern.finditer(text))
    if not found:
        return text
    match = rng.choice(found)
    return text[: match.start()] + new + text[match.end() :]


def truncate(text: str, rng: random.Random) -> str:
    return text[: rng.randrange(1, len(text))]


def truncate_in_blob(text: str, rng: random.Random) -> str:
    """Cut inside a hex blob, at least MIN_CUT_DIGITS after its quote: the old hang."""
    long_blobs = [b for b in BLOB.finditer(text) if len(b.group("hex")) > MIN_CUT_DIGITS]
    blob = rng.choice(long_blobs)
    return text[: rng.randrange(blob.start("hex") + MIN_CUT_DIGITS, blob.end("hex"))]


def delete_line(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    del lines[rng.randrange(len(lines))]
    return "".join(lines)


def duplicate_line(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    at = rng.randrange(len(lines))
    return "".join(lines[: at + 1] + lines[at:])


def edit_number(text: str, rng: random.Random) -> str:
    new = rng.choice(["0", "1", "2", "3", "7", "-1", "255", "400", "99999"])
    return _replace_match(text, NUMBER, rng, new)


def edit_type(text: str, rng: random.Random) -> str:
    new = rng.choice(["f16", "f32", "f64", "si8", "ui8", "si32", "i32", "i1", "index", "tensor"])
    return _replace_match(text, ELEMENT_TYPE, rng, new)


def edit_keyword(text: str, rng: random.Random) -> str:
    words = sorted(set(WORD.findall(text)))
    return _replace_match(text, WORD, rng, rng.choice([*words, "=", ":", ",", "->", "}", '"']))


def edit_blob(text: str, rng: random.Random) -> str:
    """Add or drop hex digits in a blob: whole bytes too many or too few, or half a byte."""
    blob = rng.choice(list(BLOB.finditer(text)))
    at = rng.randrange(blob.start("hex"), blob.end("hex"))
    change = rng.choice(["add-byte", "drop-byte", "add-digit"])
    if change == "drop-byte":
        return text[:at] + text[at + 2 :]
    return text[:at] + ("00" if change == "add-byte" else "7") + text[at:]


MUTATIONS: list[Callable[[str, random.Random], str]] = [
    truncate,
    truncate_in_blob,
    delete_line,
    duplicate_line,
    edit_number,
    edit_type,
    edit_keyword,
    edit_blob,
]


# --- running a case ------------------------------------------------------------------------


@contextmanager
def _hard_stop(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` with TimeoutError, so a hang fails the test."""

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"stopped after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _opt(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, float, str]:
    """Run `dopant opt` in-process: (exit status, seconds, standard error)."""
    start = time.perf_counter()
    with _hard_stop(HARD_STOP_S):
        status = main(["opt", str(path), "-p", "fold-batchnorm"])
    seconds = time.perf_counter() - start
    return status, seconds, capsys.readouterr().err


def _check_case(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, seconds, err = _opt(path, capsys)
    assert seconds < CASE_LIMIT_S, f"{path.name} took {seconds:.1f} s: {err}"
    assert status in (0, 1), f"{path.name}: exit status {status}: {err}"
    if status == 0:
        return
    assert err.startswith("dopant: error: ") and err.count("\n") == 1, f"{path.name}: {err}"
    assert str(path) in err, f"{path.name}: the error does not name the file: {err}"
    assert WHERE.search(err), f"{path.name}: the error names no line:col and no op: {err}"


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("source", ["float", "quantized"])
def test_mutated_ir_is_refused_fast_with_a_clear_error(
    sources: dict[str, str],
    source: str,
    mutation: Callable[[str, random.Random], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = random.Random(f"{SEED}-{source}-{mutation.__name__}")
    for case in range(CASES_PER_MUTATION):
        path = tmp_path / f"{source}-{mutation.__name__}-{case}.mlir"
        path.write_text(mutation(sources[source], rng))
        _check_case(path, capsys)


def test_the_unmutated_sources_pass(
    sources: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, text in sources.items():
        path = tmp_path / f"{name}.mlir"
        path.write_text(text)
        status, seconds, err = _opt(path, capsys)
        assert status == 0 and not err, err
        assert seconds < CASE_LIMIT_S


# --- the two bugs the fuzz run found, and the guards' precision ----------------------------


def _where(text: str, position: int) -> str:
    """line:col of `position`, counted independently of the code under test."""
    before = text[:position].split("\n")
    return f"{len(before)}:{len(before[-1]) + 1}"


def test_a_file_cut_inside_a_dense_blob_is_refused_at_the_open_quote_fast(
    sources: dict[str, str], tmp_path: Path
) -> None:
    text = sources["float"]
    blob = list(BLOB.finditer(text))[1]  # the linear layer's weights, 2880 hex digits
    path = tmp_path / "cut.mlir"
    path.write_text(text[: blob.end("hex") - 5])
    start = time.perf_counter()
    with pytest.raises(IRError) as refused, _hard_stop(HARD_STOP_S):
        read_ir(str(path))
    assert time.perf_counter() - start < 1.0
    quote = blob.start("hex") - len('"0x')
    assert str(refused.value).startswith(
        f"{path}:{_where(text, quote)}: the string literal that starts here is not closed "
        "before the end of the file, so the file looks cut short"
    )


def test_a_string_without_its_closing_quote_on_its_line_is_refused(
    sources: dict[str, str],
) -> None:
    text = sources["float"].replace('at "0.bias"', 'at "0.bias', 1)
    with pytest.raises(IRError, match=r"^f\.mlir:4:\d+: the string literal .* not closed on its"):
        parse_ir(text, "f.mlir")


def test_a_string_with_an_invalid_escape_is_refused(sources: dict[str, str]) -> None:
    text = sources["float"].replace('at "0.bias"', 'at "0.\\q-bias"', 1)
    with pytest.raises(IRError, match=r"^f\.mlir:4:\d+: .* holds the escape '\\q'"):
        parse_ir(text, "f.mlir")


def test_quotes_in_comments_and_escapes_in_strings_still_parse(sources: dict[str, str]) -> None:
    text = sources["float"].replace(
        '%b0 = qnn.constant dense<[-0.19, 0.28, 0.14, 0.16]> : tensor<4xf32> at "0.bias"',
        '// a comment with a stray " quote\n'
        '    %b0 = qnn.constant dense<[-0.19, 0.28, 0.14, 0.16]> : tensor<4xf32> at "0.\\"b//"',
    )
    paths = [op.path.data for op in parse_ir(text).walk() if isinstance(op, ConstantOp)]
    assert paths[1] == '0."b//'


def test_a_blob_with_a_byte_too_many_names_the_op_and_its_line(
    sources: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = sources["float"]
    blob = list(BLOB.finditer(text))[1]
    path = tmp_path / "long.mlir"
    path.write_text(text[: blob.end("hex")] + "00" + text[blob.end("hex") :])
    assert main(["opt", str(path), "-p", "fold-batchnorm"]) == 1
    where = _where(text, blob.start() + len("dense"))  # the literal, after its keyword
    assert capsys.readouterr().err == (
        f"dopant: error: {path}:{where}: the dense literal of op 'qnn.constant' holds 1441 "
        "bytes, but its type tensor<10x36xf32> needs 1440 (360 elements of 4 bytes); the hex "
        "blob was cut or edited, so write the file again or correct the blob or the type.\n"
    )


def test_an_invalid_quantization_attribute_names_the_op_and_its_line(
    sources: dict[str, str],
) -> None:
    text = sources["quantized"].replace("zp = [0]> at", "zp = [400]> at", 1)
    line = text[: text.index("zp = [400]")].count("\n") + 1
    with pytest.raises(IRError) as refused:
        parse_ir(text, "q.mlir")
    assert re.match(
        rf"q\.mlir:{line}:\d+: an attribute of op 'qnn\.quantize' that ends just before here is "
        r"invalid: Zero point 400 lies outside the range \[-128, 127\] of si8\.$",
        str(refused.value),
    ), refused.value
