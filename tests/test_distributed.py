"""`codesign.distributed.run_tasks` without starting Ray: the in-process path keeps the order and
never imports Ray; Ray missing, a malformed address and an unreachable one are clear errors, the
last within the connect timeout. (Ray itself runs in tests/test_ptqkd.py, once.)"""

from __future__ import annotations

import socket
import sys
import time

import pytest

from dopant.codesign import distributed
from dopant.codesign.distributed import as_completed, check_address, host_and_port, run_tasks
from dopant.support.errors import InputError


def _square(x: int) -> int:
    return x * x


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_worker_runs_in_process_in_order_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails from here on
    assert run_tasks(_square, [3, 1, 2]) == [9, 1, 4]
    assert run_tasks(_square, []) == []


def test_as_completed_yields_each_index_with_its_result_as_it_finishes() -> None:
    calls: list[int] = []

    def record(x: int) -> int:
        calls.append(x)
        return x * x

    results = as_completed(record, [3, 1, 2])
    assert calls == []  # nothing runs before the first result is asked for
    assert next(results) == (0, 9) and calls == [3]
    assert list(results) == [(1, 1), (2, 4)]
    with pytest.raises(InputError, match="workers must be a whole number"):
        as_completed(record, [1], workers=0)  # checked at the call, before any work


def test_an_error_of_a_task_is_raised_as_itself() -> None:
    def fail(_: int) -> int:
        raise InputError("stage 2 failed")

    with pytest.raises(InputError, match="stage 2 failed"):
        run_tasks(fail, [1])


def test_workers_without_ray_say_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install 'dopant\[distributed\]'"):
        run_tasks(_square, [1, 2], workers=2)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_workers_must_be_a_positive_whole_number(workers: object) -> None:
    with pytest.raises(InputError, match="workers must be a whole number"):
        run_tasks(_square, [1], workers=workers)  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["head", "ray://head", "head:port", "ray://:10001", "h:0"])
def test_a_malformed_address_is_refused(address: str) -> None:
    with pytest.raises(InputError, match=f"the Ray address '{address}' is not ray://HOST:PORT"):
        run_tasks(_square, [1], address=address)


def test_addresses_parse_to_host_and_port() -> None:
    assert host_and_port("ray://10.0.0.5:10001") == ("10.0.0.5", 10001)
    assert host_and_port("head.local:6379") == ("head.local", 6379)
    assert host_and_port("[::1]:6379") == ("::1", 6379)
    assert host_and_port("auto") is None


@pytest.mark.parametrize("scheme", ["ray://", ""])
def test_an_unreachable_address_fails_fast_before_ray_is_asked(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_ray() -> None:
        raise AssertionError("Ray must not be imported for an address nobody answers at")

    monkeypatch.setattr(distributed, "import_ray", no_ray)
    address = f"{scheme}127.0.0.1:{_unused_port()}"
    start = time.perf_counter()
    with pytest.raises(InputError, match=f"cannot reach the Ray cluster at '{address}'"):
        run_tasks(_square, [1], address=address)
    assert time.perf_counter() - start < 5


def test_an_address_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def silent(*args: object, **kwargs: object) -> None:
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(InputError, match=r"no answer within 0\.5 s"):
        check_address("ray://10.1.2.3:10001", timeout_s=0.5)
