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

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from common.transport.channel import Channel, ChannelClosed, Frame, ProtocolMismatch
from common.transport.meter import Meter
from proto import comet_pb2 as pb

CHUNK_BYTES = 1 << 20  # 1 MiB of payload per gRPC message
MAX_FRAME_BYTES = 1 << 31  # one channel message (the largest are HE ciphertext batches)
KEEPALIVE_MS = 30_000  # the client's HTTP/2 keepalive ping interval (the server must allow it)


class PeerError(ChannelClosed):
    """The stream ended with an error status from the peer (or from gRPC)."""

    def __init__(self, message: str, code: Any = None) -> None:
        super().__init__(message)
        self.code = code


_END = object()


class StreamReader:
    """Drains a gRPC message iterator on a daemon thread into a queue.

    `extract(msg)` returns the Frame inside a message or raises `ProtocolMismatch` for
    anything else; the first error, the end of the stream, or a gRPC error is queued
    once and ends the thread.
    """

    def __init__(self, messages: Iterator[Any], extract: Callable[[Any], pb.Frame]) -> None:
        self.inbox: queue.Queue = queue.Queue()
        self._messages = messages
        self._extract = extract
        self.thread = threading.Thread(target=self._run, daemon=True, name="comet-stream-reader")
        self.thread.start()

    def _run(self) -> None:
        try:
            for msg in self._messages:
                self.inbox.put(self._extract(msg))
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
        inbox: queue.Queue,
        send_message: Callable[[pb.Frame], None],
        meter: Meter | None = None,
        timeout: float = 600.0,
        chunk_bytes: int = CHUNK_BYTES,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        super().__init__(party, meter, timeout)
        self._inbox = inbox
        self._send_message = send_message
        self.chunk_bytes = chunk_bytes
        self.max_frame_bytes = max_frame_bytes
        self.wire_sent = 0
        self.wire_received = 0
        self.payload_sent = 0
        self.payload_received = 0

    def _put(self, frame: Frame) -> None:
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

    def _next(self, timeout: float) -> pb.Frame:
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise ChannelClosed(
                f"party {self.party}: no message from the peer within {timeout:g} s"
            ) from None
        if item is _END:
            self._inbox.put(_END)  # stays closed for later reads
            raise ChannelClosed(f"party {self.party}: the peer closed the stream")
        if isinstance(item, Exception):
            self._inbox.put(item)
            raise item
        if not isinstance(item, pb.Frame):
            raise ProtocolMismatch(
                f"party {self.party}: expected a protocol frame, got {type(item).__name__}"
            )
        self.wire_received += item.ByteSize()
        return item

    def _get(self, timeout: float) -> Frame:
        first = self._next(timeout)
        parts = [first.data]
        size = len(first.data)
        last = first
        while last.more:
            last = self._next(timeout)
            if last.seq != first.seq or last.tag:
                raise ProtocolMismatch(
                    f"frame #{first.seq} {first.tag!r}: chunk of another frame (#{last.seq}) "
                    "arrived before its end"
                )
            size += len(last.data)
            if size > self.max_frame_bytes:
                raise ProtocolMismatch(
                    f"frame {first.tag!r} exceeds the limit of {self.max_frame_bytes} bytes"
                )
            parts.append(last.data)
        self.payload_received += size
        return Frame(
            first.seq, first.tag, first.clock, b"".join(parts), first.scope_clock,
            first.kind or "bytes", tuple(first.shape), first.dtype, first.label,
        )  # fmt: skip
