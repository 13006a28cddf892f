"""Where HE work runs (`common.he.executor`): streamed jobs keep their order, are taken
lazily and bounded in flight."""

import concurrent.futures as cf
import threading
import time

import pytest

from common.he.executor import FuturesExecutor, SerialExecutor


def _slow_square(x: int) -> int:
    time.sleep(0.02 * (x % 3))  # out-of-order completion
    return x * x


@pytest.mark.parametrize("kind", ["serial", "threads"])
def test_imap_keeps_order_and_takes_jobs_lazily(kind):
    ex = (
        SerialExecutor()
        if kind == "serial"
        else FuturesExecutor(cf.ThreadPoolExecutor(2), workers=2)
    )
    made: list[int] = []
    seen: list[tuple[int, int]] = []  # (result, jobs made when it was yielded)

    def jobs():
        for i in range(20):
            made.append(i)
            yield i

    try:
        for r in ex.imap(_slow_square, jobs()):
            seen.append((r, len(made)))
    finally:
        ex.close()
    assert [r for r, _ in seen] == [i * i for i in range(20)]
    # results come back while jobs are still being made, never more than 2 per worker
    # (+ the one being made) ahead of the consumer
    ahead = 1 if kind == "serial" else 2 * 2 + 1
    assert all(m - k <= ahead for k, (_, m) in enumerate(seen))
    assert seen[0][1] < 20


def test_imap_cancels_what_has_not_started_when_a_job_fails():
    ex = FuturesExecutor(cf.ThreadPoolExecutor(1), workers=1)
    started: list[int] = []
    lock = threading.Lock()

    def fn(x: int) -> int:
        with lock:
            started.append(x)
        if x == 1:
            raise ValueError("job 1 fails")
        time.sleep(0.05)
        return x

    try:
        with pytest.raises(ValueError, match="job 1 fails"):
            list(ex.imap(fn, iter(range(10))))
    finally:
        ex.close()
    time.sleep(0.2)
    assert len(started) < 10
