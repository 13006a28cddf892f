"""An in-process channel pair for tests and single-machine benchmarks."""

from __future__ import annotations

import queue

from common.transport.channel import Channel, ChannelClosed, Frame
from common.transport.meter import Meter

_CLOSED = object()


class LocalChannel(Channel):
    """One end of a queue-backed pair. Counts the payload bytes it actually moved."""

    def __init__(
        self,
        party: int,
        inbox: queue.Queue,
        outbox: queue.Queue,
        meter: Meter | None = None,
        timeout: float = 600.0,
    ) -> None:
        super().__init__(party, meter, timeout)
        self._inbox = inbox
        self._outbox = outbox
        self.wire_bytes_out = 0

    def _put(self, frame: Frame) -> None:
        self.wire_bytes_out += len(frame.payload)
        self._outbox.put(frame)

    def _get(self, timeout: float, limit: int | None = None) -> Frame:
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise ChannelClosed(f"party {self.party}: no message within {timeout} s") from None
        if item is _CLOSED:
            raise ChannelClosed(f"party {self.party}: peer closed the channel")
        return item

    def close(self) -> None:
        self._outbox.put(_CLOSED)


def local_pair(timeout: float = 600.0) -> tuple[LocalChannel, LocalChannel]:
    """Two connected channel ends, for party 0 and party 1."""
    a: queue.Queue = queue.Queue()
    b: queue.Queue = queue.Queue()
    return LocalChannel(0, a, b, timeout=timeout), LocalChannel(1, b, a, timeout=timeout)


def run_local(fn, args0: tuple = (), args1: tuple = (), timeout: float = 600.0):
    """Run ``fn(channel, *args_i)`` for both parties in two threads over a local pair.

    Returns ``(result0, result1)``. If one party raises, its channel is closed so the
    other fails fast with `ChannelClosed`; the first error is re-raised here.
    """
    import threading

    chans = local_pair(timeout)
    results: list = [None, None]
    errors: list[BaseException | None] = [None, None]

    def body(i: int, args: tuple) -> None:
        try:
            results[i] = fn(chans[i], *args)
        except BaseException as exc:
            errors[i] = exc
            chans[i].close()

    t = threading.Thread(target=body, args=(1, args1), daemon=True)
    t.start()
    body(0, args0)
    t.join()
    for e in errors:
        if e is not None and not isinstance(e, ChannelClosed):
            raise e
    for e in errors:
        if e is not None:
            raise e
    return results[0], results[1]
