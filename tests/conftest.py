"""Test-wide settings.

- One BLAS thread, so numpy's timings do not collapse when the two cores of a shared machine
  are busy (two BLAS threads fighting another process ran 100x slower here).
- No hypothesis deadline: a loaded machine (or `pytest -n 2` beside other jobs) makes any
  example slow now and then, and a deadline then fails a correct test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings
from threadpoolctl import threadpool_limits

settings.register_profile("dopant", deadline=None)
settings.load_profile("dopant")


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(limits=1, user_api="blas"):
        yield


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
