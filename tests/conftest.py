"""Test-wide settings.

- One BLAS thread, so numpy's timings do not collapse when the two cores of a shared machine
  are busy (two BLAS threads fighting another process ran 100x slower here), and one torch
  thread per worker for the same reason (torch's two intra-op threads under `-n 2` made the
  sensitivity tests 3-20x slower).
- No hypothesis deadline: a loaded machine (or `pytest -n 2` beside other jobs) makes any
  example slow now and then, and a deadline then fails a correct test.
- Every test's `tmp_path` is its temporary directory: `tempfile` and subprocesses (TMPDIR)
  create their files there, so what the code leaves behind on purpose (the driver's
  reproducer of a failing pass) stays in pytest's own folders, which pytest prunes, not in
  the system's temporary directory. Module- and session-scoped fixtures share one such
  folder for the session.
- Latency tables are cached in a folder of the session (`DOPANT_CACHE_DIR`), never in the
  user's cache: a test measures what the code measures now.
- `ray_dir`: a short folder for a test's Ray session (RAY_TMPDIR).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from threadpoolctl import threadpool_limits
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.frontend import import_model
from dopant.compiler.models import zoo

settings.register_profile("dopant", deadline=None)
settings.load_profile("dopant")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(threads)


def _use_temp_dir(patch: pytest.MonkeyPatch, folder: Path) -> None:
    patch.setattr(tempfile, "tempdir", str(folder))
    patch.setenv("TMPDIR", str(folder))


@pytest.fixture(autouse=True, scope="session")
def _session_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        _use_temp_dir(patch, tmp_path_factory.mktemp("session-temp"))
        patch.setenv("DOPANT_CACHE_DIR", str(tmp_path_factory.mktemp("latency-cache")))
        yield


@pytest.fixture(autouse=True)
def _test_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_temp_dir(monkeypatch, tmp_path)


@pytest.fixture
def ray_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A short folder for Ray's session (its socket paths must fit 107 bytes, and the test's
    own temporary folder is too deep), removed afterwards."""
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    yield
    shutil.rmtree(folder, ignore_errors=True)


# A machine so small that every layer of a small network is cut into many tiles: row
# tiles with pooling windows across their edges, K-chunks, partial channel tiles.
TINY = """name = "tiny"
rows = 4
cols = 4
dataflow = "ws"
scratchpad_kib = 1
scratchpad_banks = 1
accumulator_kib = 1
accumulator_banks = 1
dram_bytes_per_cycle = 4
dram_latency_cycles = 10
clock_mhz = 100.0
vector_lanes = 4
"""


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny machine as a .toml target file."""
    path = tmp_path_factory.mktemp("targets") / "tiny.toml"
    path.write_text(TINY)
    return str(path)


@pytest.fixture(scope="session")
def zoo_ir() -> Callable[..., ModuleOp]:
    """`zoo_ir(name, input_shape=None)`: a fresh copy of zoo model `name`'s float IR (its
    seeded untrained weights, at its default input shape unless given), each model and shape
    imported once a session (torch.export takes seconds)."""
    imported: dict[tuple[str, tuple[int, ...] | None], ModuleOp] = {}

    def get(name: str, input_shape: tuple[int, ...] | None = None) -> ModuleOp:
        key = (name, input_shape)
        if key not in imported:
            entry = zoo.get(name)
            shape = entry.input_shape if input_shape is None else input_shape
            imported[key] = import_model(entry.build(input_shape=shape), torch.zeros(shape))
        return imported[key].clone()

    return get
