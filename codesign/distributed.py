"""Independent work items run in parallel on Ray (DESIGN.md: parallel work on a real engine).

    results = run_tasks(train_stage, tasks, workers=3)             # a local Ray runtime
    results = run_tasks(train_stage, tasks, address="ray://head:10001")  # an existing cluster
    results = run_tasks(train_stage, tasks)                        # in this process, no Ray
    for i, result in as_completed(train_stage, tasks, workers=3):  # each as it finishes

`run_tasks(fn, items)` returns `[fn(item) for item in items]`, in the order of `items`, however
the calls ran. With one worker and no address it is that loop, in this process, and Ray is never
imported, so it works without Ray installed; a single item without an address runs in this
process too (a local runtime would only add its start-up). Otherwise each call is one Ray task
asking for one CPU: `workers=N` starts a local Ray runtime of N CPUs for the call and shuts it
down after; `address` joins a running cluster (`ray://host:port` through Ray Client,
`host:port` of the head's GCS, or `auto` for the cluster `ray start` left on this machine) and
only disconnects. A Ray
session already initialized by the caller is used as it is and left running.

Ray is an optional extra (`pip install 'dopant[distributed]'`). `fn` must be a function that
Ray's workers can import (defined at module level in an installed package), and `items` and
results must pickle: plain data, numpy arrays, IR as text. Determinism is the task's own
business (seeds and thread counts inside `fn`): the same `fn` on the same item gives the same
result in this process or in a worker, which is what makes the two paths interchangeable.

Ray retries an unreachable address for minutes (a GCS address) or 30 s (Ray Client) before it
gives up, so the address is first opened with a plain TCP connection under `connect_timeout_s`:
nothing listening there is an InputError at once.
"""

from __future__ import annotations

import importlib
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any, TypeVar

from dopant.support.errors import DopantError, InputError

Item = TypeVar("Item")
Result = TypeVar("Result")

INSTALL_HINT = "pip install 'dopant[distributed]'"
CONNECT_TIMEOUT_S = 10.0  # a TCP connection to the cluster's head, before Ray is asked
CLIENT_SCHEME = "ray://"


def run_tasks(
    fn: Callable[[Item], Result],
    items: Sequence[Item],
    *,
    workers: int = 1,
    address: str | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> list[Result]:
    """`[fn(item) for item in items]`, run in this process (`workers=1`, no `address`) or as Ray
    tasks (module docstring), in the order of `items` either way.

    InputError for `workers` below 1, a malformed or unreachable `address` (within
    `connect_timeout_s`), or Ray missing when it is needed. An error a task raises is raised
    here: a DopantError as itself, anything else as Ray's RayTaskError with the remote
    traceback.
    """
    done = dict(
        as_completed(
            fn, items, workers=workers, address=address, connect_timeout_s=connect_timeout_s
        )
    )
    return [done[i] for i in range(len(items))]


def as_completed(
    fn: Callable[[Item], Result],
    items: Sequence[Item],
    *,
    workers: int = 1,
    address: str | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> Iterator[tuple[int, Result]]:
    """(index in `items`, `fn(item)`) for each item as its call finishes, run as `run_tasks`
    runs them (in this process: in order); so a caller can keep each result at once, and an
    interrupted run keeps what had finished. The checks are made before the first call."""
    ray = check_workers(workers, address, connect_timeout_s)
    if ray is None or (address is None and len(items) < 2):
        return ((i, fn(item)) for i, item in enumerate(items))
    return _ray_completed(ray, fn, items, workers, address)


def _ray_completed(
    ray: ModuleType,
    fn: Callable[[Item], Result],
    items: Sequence[Item],
    workers: int,
    address: str | None,
) -> Iterator[tuple[int, Result]]:
    with _session(ray, workers, address):
        remote = ray.remote(num_cpus=1)(fn)
        index = {remote.remote(item): i for i, item in enumerate(items)}
        pending = list(index)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, DopantError):
                    raise error.cause from None
                raise
            yield index[ready[0]], result


def check_workers(
    workers: int, address: str | None, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> ModuleType | None:
    """The `ray` module when `workers` and `address` need Ray, else None; every InputError of
    `run_tasks` that needs no task, so a caller can check before its own work."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a whole number of at least 1, got {workers!r}.")
    if address is not None:
        check_address(address, connect_timeout_s)
    elif workers == 1:
        return None
    return import_ray()


def import_ray() -> ModuleType:
    """The `ray` module; InputError saying how to install it when it is missing."""
    try:
        return importlib.import_module("ray")
    except ImportError as error:
        raise InputError(
            f"parallel work runs on Ray, which is not installed here ({error}); install it "
            f"with {INSTALL_HINT}, or run with one worker and no address."
        ) from None


def host_and_port(address: str) -> tuple[str, int] | None:
    """The (host, port) a cluster address connects to; None for `auto` (Ray finds the local
    cluster itself). InputError for anything else than `ray://host:port`, `host:port`, `auto`."""
    if address == "auto":
        return None
    rest = address.removeprefix(CLIENT_SCHEME)
    host, colon, port = rest.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(
            f"the Ray address '{address}' is not ray://HOST:PORT (Ray Client, port 10001 by "
            "default), HOST:PORT (the head's GCS, port 6379 by default) or 'auto'."
        )
    return host, int(port)


def check_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """InputError unless something accepts a TCP connection at `address` within `timeout_s`.

    Why: Ray itself retries a dead address for a long time (module docstring).
    """
    target = host_and_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as error:
        timed_out = isinstance(error, TimeoutError)
        reason = f"no answer within {timeout_s:g} s" if timed_out else error.strerror or error
        raise InputError(
            f"cannot reach the Ray cluster at '{address}': {reason}; is `ray start --head` "
            "running there, and is the port open to this machine?"
        ) from None


@contextmanager
def _session(ray: ModuleType, workers: int, address: str | None) -> Iterator[None]:
    """A Ray session for the tasks: the caller's if one is initialized, else one started
    (locally with `workers` CPUs, or joined at `address`) and shut down afterwards."""
    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        options |= {"num_cpus": workers, "include_dashboard": False}
    try:
        ray.init(address=address, **options)
    except (ConnectionError, ValueError) as error:
        what = f"join the cluster at '{address}'" if address else "start locally"
        raise InputError(f"Ray could not {what}: {error}") from None
    except OSError as error:
        if "path length" not in str(error):
            raise
        raise InputError(
            f"Ray could not start: {error}. Its sockets live under $RAY_TMPDIR (else $TMPDIR); "
            "set RAY_TMPDIR to a short folder such as /tmp."
        ) from None
    try:
        yield
    finally:
        ray.shutdown()
