"""The README's examples run as written, in order, from a copy of the repository's files.

Every command in a ```sh block of the README runs, except the two setup lines at the top (CI
runs the test one; the main job has its own test) and lines that name what they need and the
suite does not have: the full Fashion-MNIST data set (`needs dataset-fashion-mnist`) or the
benchmark extra (`python benchmarks/...`). Every ```python block runs too, in one namespace.
A command runs in-process through `dopant.compiler.cli.main` when it is a plain `dopant ...`
call (its standard output sent to a file if it ends in `> FILE`), else through bash with the
venv's scripts first on PATH.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dopant.compiler.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"```(sh|python)\n(.*?)```", re.DOTALL)
NOT_RUN = ("needs dataset-fashion-mnist", "python benchmarks/", "python3 -m venv", "pip install")
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


def _run(command: str, folder: Path) -> None:
    plain, _, into = command.partition(" > ")
    argv = shlex.split(plain)
    if argv[0] == "dopant" and not SHELL.search(plain) and not SHELL.search(into):
        with contextlib.ExitStack() as stack:
            if into:
                output = stack.enter_context((folder / into.strip()).open("w"))
                stack.enter_context(contextlib.redirect_stdout(output))
            try:
                status = main(argv[1:])
            except SystemExit as done:  # argparse's --version and --help exit
                status = done.code
        assert status == 0, f"README command failed ({status}): {command}"
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
