"""The README's examples run as written, in order, from a copy of the repository's files.

Every command in a ```sh block of the README runs, except the two setup lines at the top (CI
runs the test one; the main job has its own test) and lines that name what they need and the
suite does not have: the full Fashion-MNIST data set (`needs dataset-fashion-mnist`), a Ray
cluster (`needs a Ray cluster`) or a benchmark's time (`python benchmarks/...`). Every
```python block runs too, in one namespace.
A command runs in-process through `dopant.compiler.cli.main` when it is made of plain
`dopant ...` calls joined by `&&` or `|` (a pipe hands its text on as stdin; the last call's
standard output goes to a file if it ends in `> FILE`), else through bash with the venv's
scripts first on PATH.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from dopant.compiler.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"```(sh|python)\n(.*?)```", re.DOTALL)
NOT_RUN = (
    "needs dataset-fashion-mnist",
    "needs a Ray cluster",
    "python benchmarks/",
    "python3 -m venv",
    "pip install",
)
SHELL = re.compile(r"[|&;<>$`]")


def _commands() -> list[str]:
    lines = []
    for kind, body in BLOCK.findall(README):
        if kind != "sh":
            continue
        for line in body.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if any(marker in line for marker in NOT_RUN):
                continue
            lines.append(line.split("  #")[0].strip())
    return lines


def _python_blocks() -> list[str]:
    return [body for kind, body in BLOCK.findall(README) if kind == "python"]


def _in_process(command: str) -> list[tuple[list[list[str]], str]] | None:
    """`A && B`, each a pipeline `A | B` of plain `dopant ...` calls, as (argv lists, the file
    the last call's output goes to or ""); None when any part needs a shell."""
    steps = []
    for step in command.split(" && "):
        plain, _, into = step.partition(" > ")
        parts = [shlex.split(part) for part in plain.split(" | ")]
        if SHELL.search(into) or any(
            not argv or argv[0] != "dopant" or SHELL.search(shlex.join(argv)) for argv in parts
        ):
            return None
        steps.append((parts, into.strip()))
    return steps


def _dopant(argv: list[str], stdin: str | None, stdout: TextIO, command: str) -> None:
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(stdout))
        if stdin is not None:
            stack.enter_context(_stdin(stdin))
        try:
            status = main(argv[1:])
        except SystemExit as done:  # argparse's --version and --help exit
            status = done.code
    assert status == 0, f"README command failed ({status}): {command}"


@contextlib.contextmanager
def _stdin(text: str) -> Iterator[None]:
    saved, sys.stdin = sys.stdin, io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved


def _run(command: str, folder: Path) -> None:
    """In this process through `main` when `_in_process` can (a pipe's text is handed on as
    the next call's stdin), else through bash with the venv's scripts first on PATH."""
    steps = _in_process(command)
    if steps is not None:
        for parts, into in steps:
            text = None
            for argv in parts[:-1]:
                piped = io.StringIO()
                _dopant(argv, text, piped, command)
                text = piped.getvalue()
            with contextlib.ExitStack() as stack:
                output = stack.enter_context((folder / into).open("w")) if into else sys.stdout
                _dopant(parts[-1], text, output, command)
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"README command failed: {command}\n{done.stderr[-2000:]}"


def test_the_readme_lists_commands_and_python() -> None:
    commands = _commands()
    assert len(commands) >= 20 and any(c.startswith("dopant compile") for c in commands)
    assert _python_blocks()


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"# tests\n{command}\n" in README


def test_pipes_and_chains_of_dopant_calls_run_in_process_and_others_in_a_shell() -> None:
    assert _in_process("dopant import zoo:lenet5 | dopant opt - -p fold-batchnorm -o a.mlir") == [
        (
            [
                ["dopant", "import", "zoo:lenet5"],
                ["dopant", "opt", "-", "-p", "fold-batchnorm", "-o", "a.mlir"],
            ],
            "",
        )
    ]
    assert _in_process("dopant compile a.mlir -o a.dpb && dopant profile a.dpb > p.txt") == [
        ([["dopant", "compile", "a.mlir", "-o", "a.dpb"]], ""),
        ([["dopant", "profile", "a.dpb"]], "p.txt"),
    ]
    assert _in_process("dopant zoo | grep resnet") is None
    assert _in_process("dopant run $NET") is None
    assert _in_process("python -c 'print(1)'") is None


def test_every_readme_command_and_snippet_runs_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "clone"
    shutil.copytree(ROOT / "examples", folder / "examples")
    monkeypatch.chdir(folder)
    for command in _commands():
        _run(command, folder)
        capsys.readouterr()  # keep the captured output of one command at a time
    namespace: dict[str, object] = {}
    for block in _python_blocks():
        exec(compile(block, "README.md", "exec"), namespace)  # the README's own code
