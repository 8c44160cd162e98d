"""One torch thread and one BLAS thread for a block of work: what training on a shared small
machine wants (two intra-op threads fighting another process ran several times slower), and what
makes a run's sums the same in any process (the same kernels split the same way)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread and one BLAS thread inside, the counts before restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)
