"""Where HE work runs: one small interface, in this thread or in worker processes.

SEAL holds the GIL, so a second core needs a second process. `HeExecutor.map(fn, jobs)`
runs a module-level function over picklable jobs and returns the results in order;
`HeExecutor.imap(fn, jobs)` streams: it takes the jobs as the caller makes them (a
server makes a job when its ciphertexts arrive) and yields each result as soon as it
and those before it are done, so the peer decrypts early results while later jobs run.
`SerialExecutor` runs them here (tests, the client); `ProcessExecutor` in local worker
processes (the server's default: one per core). `FuturesExecutor` adapts any
`concurrent.futures.Executor`, which is how a cluster engine runs the same jobs when
one machine is not enough: Dask's `distributed.Client(...).get_executor()` and Ray's
`ray.util.multiprocessing`-style pools expose that interface.

What crosses to a worker: ciphertexts and public keys (public), the server's plaintext
operands and the CRT residues of its masks (the server's own secrets, staying inside
the server's processes). No secret key and no generator state is ever pickled
(`common.prg.SecureRng` refuses); a worker keys its own generator from `os.urandom`.

Workers watch their parent: if the server dies (even by SIGKILL), they exit within a
second instead of lingering as orphans.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class HeExecutor(Protocol):
    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]: ...
    def imap(self, fn: Callable[[J], R], jobs: Iterable[J]) -> Iterator[R]: ...
    def close(self) -> None: ...

    @property
    def workers(self) -> int: ...


class SerialExecutor:
    """Runs every job in the calling thread."""

    workers = 1

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        return [fn(j) for j in jobs]

    def imap(self, fn: Callable[[J], R], jobs: Iterable[J]) -> Iterator[R]:
        for j in jobs:
            yield fn(j)

    def close(self) -> None:
        pass


class FuturesExecutor:
    """Any `concurrent.futures.Executor` (a local process pool, Dask, …)."""

    def __init__(self, executor: cf.Executor, workers: int) -> None:
        self._ex = executor
        self.workers = workers

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        if len(jobs) <= 1:
            return [fn(j) for j in jobs]
        return list(self._ex.map(fn, jobs))

    def imap(self, fn: Callable[[J], R], jobs: Iterable[J]) -> Iterator[R]:
        """Results in the jobs' order. Each job is submitted as soon as `jobs` yields
        it; between two jobs the results already done are yielded, and at most
        `ahead` (2 per worker) are in flight or unread: the caller's memory for jobs
        and results stays bounded however long `jobs` is. If the consumer stops early
        or a job fails, the jobs not yet started are cancelled."""
        ahead = 2 * self.workers
        pending: deque[cf.Future[R]] = deque()
        try:
            for j in jobs:
                pending.append(self._ex.submit(fn, j))
                while pending and (pending[0].done() or len(pending) > ahead):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()

    def close(self) -> None:
        self._ex.shutdown(wait=False, cancel_futures=True)


def _watch_parent(parent: int) -> None:
    def loop() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=loop, daemon=True, name="comet-parent-watch").start()


class ProcessExecutor(FuturesExecutor):
    """`workers` local processes (spawned: no inherited SEAL or generator state)."""

    def __init__(self, workers: int | None = None) -> None:
        n = workers or max(1, os.cpu_count() or 1)
        pool = cf.ProcessPoolExecutor(
            max_workers=n,
            mp_context=mp.get_context("spawn"),
            initializer=_watch_parent,
            initargs=(os.getpid(),),
        )
        super().__init__(pool, n)
        self._pool = pool

    def pids(self) -> list[int]:
        """The worker processes started so far (for tests and diagnostics)."""
        return [p.pid for p in getattr(self._pool, "_processes", {}).values()]

    def close(self) -> None:
        procs = list(getattr(self._pool, "_processes", {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:  # a job in flight is not waited for: the session is ending
            if p.is_alive():
                p.terminate()


def default_executor(kind: str = "serial", workers: int | None = None) -> Any:
    """ "serial" or "processes" (with `workers`, default one per core)."""
    if kind == "serial":
        return SerialExecutor()
    if kind == "processes":
        return ProcessExecutor(workers)
    raise ValueError(f"unknown executor {kind!r} (choose 'serial' or 'processes')")
