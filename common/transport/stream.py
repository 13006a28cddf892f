"""A `Channel` over a gRPC bidirectional stream (both the server's and the client's end).

Frames travel as `proto.comet_pb2.Frame` messages. A payload larger than `chunk_bytes`
is split into several chunks (`more` set on all but the last) so that no gRPC message
exceeds a few MiB; the receiver reassembles and refuses a frame above `max_frame_bytes`
(a malicious or broken peer cannot make it buffer without bound). A reader thread owned
by the session puts incoming frames on `inbox` (see `StreamReader`), so that receiving
has a timeout: a peer that stalls is detected after `timeout` seconds.

`wire_sent` / `wire_received` count the serialized bytes of every Frame message this end
moved (what gRPC carried, before HTTP/2 framing); the meter counts payload bytes.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from common.transport.channel import Channel, ChannelClosed, Frame, ProtocolMismatch
from common.transport.meter import Meter
from proto import comet_pb2 as pb

CHUNK_BYTES = 1 << 20  # 1 MiB of payload per gRPC message
MAX_FRAME_BYTES = 1 << 31  # one channel message (the largest are HE ciphertext batches)
INBOX_MESSAGES = 16  # gRPC messages (≤ 1 MiB chunks, ≤ 4 MiB each) buffered per session
KEEPALIVE_MS = 30_000  # the client's HTTP/2 keepalive ping interval (the server must allow it)


class PeerError(ChannelClosed):
    """The stream ended with an error status from the peer (or from gRPC)."""

    def __init__(self, message: str, code: Any = None) -> None:
        super().__init__(message)
        self.code = code


_END = object()


class Inbox:
    """A bounded queue of received messages that can also be failed at once.

    `put` blocks while `maxsize` messages wait (the reader then stops pulling from
    gRPC, so HTTP/2 flow control throttles the sender) — except while `relaxed` is
    set: the owner sets it while its own send is blocked on a peer that does not read,
    because a peer that sends while we send would otherwise deadlock with us (both
    readers full, both writers blocked). The server never relaxes (a client cannot make
    it buffer more than `maxsize` messages); the client relaxes during its sends (only a
    malicious server can make it buffer, and only its own session suffers).
    `fail(exc)` makes every later `get` raise `exc` at once, even with messages queued.
    """

    def __init__(self, maxsize: int = INBOX_MESSAGES) -> None:
        self.maxsize = maxsize
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._relaxed = False

    def __len__(self) -> int:
        return len(self._items)

    def set_relaxed(self, relaxed: bool) -> None:
        with self._cond:
            self._relaxed = relaxed
            self._cond.notify_all()

    def put(self, item: Any) -> None:
        """Queue one message; blocks while full (returns at once once failed)."""
        with self._cond:
            while len(self._items) >= self.maxsize and not self._relaxed and self._error is None:
                self._cond.wait()
            if self._error is None:
                self._items.append(item)
                self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """Every later `get` raises `exc` (the first failure wins); wakes all waiters."""
        with self._cond:
            if self._error is None:
                self._error = exc
                self._items.clear()
            self._cond.notify_all()

    def get(self, timeout: float) -> Any:
        """The next message; raises `queue.Empty` after `timeout` s, or the failure."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise queue.Empty
                self._cond.wait(left)
            if self._error is not None:
                raise self._error
            item = self._items.popleft()
            self._cond.notify_all()
            return item


class StreamReader:
    """Drains a gRPC message iterator on a daemon thread into a bounded `Inbox`.

    `extract(msg)` returns the Frame inside a message or raises `ProtocolMismatch` for
    anything else; the first error, the end of the stream, or a gRPC error is queued
    once and ends the thread. At most `maxsize` messages wait (see `Inbox`).
    """

    def __init__(
        self,
        messages: Iterator[Any],
        extract: Callable[[Any], pb.Frame],
        maxsize: int = INBOX_MESSAGES,
    ) -> None:
        self.inbox = Inbox(maxsize)
        self._messages = messages
        self._extract = extract
        self.thread = threading.Thread(target=self._run, daemon=True, name="comet-stream-reader")
        self.thread.start()

    def _run(self) -> None:
        try:
            for msg in self._messages:
                self.inbox.put(self._extract(msg))
                if self.inbox._error is not None:
                    return
            self.inbox.put(_END)
        except ProtocolMismatch as e:
            self.inbox.put(e)
        except Exception as e:  # grpc.RpcError and friends: the stream is gone
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            self.inbox.put(PeerError(details or str(e), code))


class StreamChannel(Channel):
    """One party's end: sends through `send_message(pb.Frame)`, receives from `inbox`."""

    def __init__(
        self,
        party: int,
        inbox: Inbox | queue.Queue,
        send_message: Callable[[pb.Frame], None],
        meter: Meter | None = None,
        timeout: float = 600.0,
        chunk_bytes: int = CHUNK_BYTES,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        check: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(party, meter, timeout)
        # `check()` runs before every message sent or received and may raise: the
        # session's deadline and the server's shutdown end a session at a message
        # boundary, even in the middle of its HE work.
        self._check = check or (lambda: None)
        self._inbox = inbox
        self._send_message = send_message
        self.chunk_bytes = chunk_bytes
        self.max_frame_bytes = max_frame_bytes
        self.wire_sent = 0
        self.wire_received = 0
        self.payload_sent = 0
        self.payload_received = 0

    def _put(self, frame: Frame) -> None:
        self._check()
        data = frame.payload
        n = len(data)
        starts = range(0, n, self.chunk_bytes) if n else [0]
        for s in starts:
            msg = pb.Frame(
                seq=frame.seq,
                tag=frame.tag if s == 0 else "",
                clock=frame.clock,
                scope_clock=frame.scope_clock,
                data=data[s : s + self.chunk_bytes],
                more=s + self.chunk_bytes < n,
            )
            if s == 0:  # the type and label travel once, with the first chunk
                msg.kind, msg.dtype, msg.label = frame.kind, frame.dtype, frame.label
                msg.shape.extend(frame.shape)
            self.wire_sent += msg.ByteSize()
            self._send_message(msg)
        self.payload_sent += n

    def _sticky(self, exc: Exception) -> Exception:
        """Make `exc` the answer to every later read (the stream is over)."""
        if isinstance(self._inbox, Inbox):
            self._inbox.fail(exc)
        else:
            self._inbox.put(exc)
        return exc

    def _next(self, timeout: float) -> pb.Frame:
        self._check()
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise ChannelClosed(
                f"party {self.party}: no message from the peer within {timeout:g} s"
            ) from None
        if item is _END:
            # The peer left (a killed process's stream can end cleanly too): not a timeout.
            raise self._sticky(PeerError(f"party {self.party}: the peer closed the stream"))
        if isinstance(item, Exception):
            raise self._sticky(item)
        if not isinstance(item, pb.Frame):
            raise ProtocolMismatch(
                f"party {self.party}: expected a protocol frame, got {type(item).__name__}"
            )
        self.wire_received += item.ByteSize()
        return item

    def _get(self, timeout: float, limit: int | None = None) -> Frame:
        # The receiver's expectation bounds the reassembly: a frame of known size may
        # not grow past it, any other past the session's frame limit.
        cap = self.max_frame_bytes if limit is None else min(limit, self.max_frame_bytes)
        first = self._next(timeout)
        parts = [first.data]
        size = len(first.data)
        if size > cap:
            raise ProtocolMismatch(f"frame {first.tag!r} exceeds the limit of {cap} bytes")
        last = first
        while last.more:
            last = self._next(timeout)
            if last.seq != first.seq or last.tag:
                raise ProtocolMismatch(
                    f"frame #{first.seq} {first.tag!r}: chunk of another frame (#{last.seq}) "
                    "arrived before its end"
                )
            size += len(last.data)
            if size > cap:
                raise ProtocolMismatch(f"frame {first.tag!r} exceeds the limit of {cap} bytes")
            parts.append(last.data)
        self.payload_received += size
        return Frame(
            first.seq, first.tag, first.clock, b"".join(parts), first.scope_clock,
            first.kind or "bytes", tuple(first.shape), first.dtype, first.label,
        )  # fmt: skip
