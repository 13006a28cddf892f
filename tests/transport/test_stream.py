"""StreamChannel (the gRPC end): chunking, reassembly, limits, typed frames."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from common.transport import ChannelClosed, ProtocolMismatch
from common.transport.stream import Inbox, StreamChannel, StreamReader
from proto import comet_pb2 as pb


def _pair(chunk: int = 100, limit: int = 1 << 20):
    """Two ends joined by queues; `sent` records every gRPC message (chunk) a→b."""
    ab, ba = queue.Queue(), queue.Queue()
    sent: list[pb.Frame] = []

    def a_put(m: pb.Frame) -> None:
        sent.append(m)
        ab.put(m)

    a = StreamChannel(0, ba, a_put, timeout=2, chunk_bytes=chunk, max_frame_bytes=limit)
    b = StreamChannel(1, ab, ba.put, timeout=2, chunk_bytes=chunk, max_frame_bytes=limit)
    return a, b, sent


def test_large_tensor_is_chunked_and_reassembled() -> None:
    a, b, sent = _pair(chunk=100)
    x = np.arange(120, dtype=np.uint64).reshape(10, 12)  # 960 bytes → 10 chunks
    with a.scope(phase="online", layer="layer0", op="attn"):
        a.send_array("x", x)
    assert len(sent) == 10 and all(len(m.data) <= 100 for m in sent)
    assert [m.more for m in sent] == [True] * 9 + [False]
    assert sent[0].kind == "ring" and list(sent[0].shape) == [10, 12]
    assert sent[0].label == "online/layer0/attn" and not sent[1].label  # once per frame
    np.testing.assert_array_equal(b.recv_array("x", (10, 12), np.uint64), x)
    assert a.payload_sent == b.payload_received == 960
    assert a.wire_sent == b.wire_received == sum(m.ByteSize() for m in sent)


def test_empty_payload_is_one_message() -> None:
    a, b, sent = _pair()
    a.send("e", b"")
    assert b.recv("e") == b"" and len(sent) == 1


def test_oversized_frame_is_refused() -> None:
    a, b, _ = _pair(chunk=100, limit=250)
    a.send("big", bytes(1000))
    with pytest.raises(ProtocolMismatch, match="exceeds the limit of 250 bytes"):
        b.recv("big")


def test_interleaved_chunks_are_refused() -> None:
    _, b, _ = _pair()
    b._inbox.put(pb.Frame(seq=0, tag="a", data=b"x", more=True))
    b._inbox.put(pb.Frame(seq=1, tag="b", data=b"y"))
    with pytest.raises(ProtocolMismatch, match="chunk of another frame"):
        b.recv("a")


def test_stall_and_end_of_stream() -> None:
    _, b, _ = _pair()
    with pytest.raises(ChannelClosed, match="within 2 s"):
        b.recv("never")
    reader = StreamReader(iter([]), lambda m: m)
    reader.thread.join(5)
    c = StreamChannel(1, reader.inbox, lambda m: None, timeout=2)
    with pytest.raises(ChannelClosed, match="closed the stream"):
        c.recv("x")


def test_reader_stops_pulling_when_the_inbox_is_full() -> None:
    # A peer pushing junk faster than the session reads: the reader must stop pulling
    # from gRPC (so HTTP/2 flow control throttles the sender) instead of buffering all.
    pulled = 0

    def flood():
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield pb.Frame(seq=i, tag="junk", data=b"\0" * 1024)

    reader = StreamReader(flood(), lambda m: m, maxsize=8)
    time.sleep(0.5)
    assert len(reader.inbox) == 8 and pulled <= 9
    reader.inbox.fail(ChannelClosed("done"))  # the session ends: the reader lets go
    reader.thread.join(5)
    assert not reader.thread.is_alive()


def test_relaxed_inbox_accepts_while_its_owner_sends() -> None:
    inbox = Inbox(maxsize=2)
    inbox.set_relaxed(True)
    for i in range(5):
        inbox.put(i)  # would block forever if the bound held while relaxed
    assert len(inbox) == 5 and inbox.get(1) == 0


def test_reassembly_stops_at_the_expected_size() -> None:
    # A 32-byte tensor announced as a 2 GiB stream of chunks is refused at the first
    # chunk past 32 bytes, not after buffering the whole frame.
    _, b, _ = _pair(chunk=16, limit=1 << 31)
    b._inbox.put(pb.Frame(seq=0, tag="x", data=b"\0" * 16, more=True))
    b._inbox.put(pb.Frame(seq=0, data=b"\0" * 16, more=True))
    b._inbox.put(pb.Frame(seq=0, data=b"\0" * 16, more=True))
    with pytest.raises(ProtocolMismatch, match="exceeds the limit of 32 bytes"):
        b.recv_array("x", (4,), np.uint64)
    assert b._inbox.qsize() == 0  # nothing past the limit was read


def test_check_hook_ends_a_session_at_a_message_boundary() -> None:
    stop = []

    def check() -> None:
        if stop:
            raise ChannelClosed("shutting down")

    c = StreamChannel(0, queue.Queue(), lambda m: None, timeout=2, check=check)
    c.send("a", b"x")
    stop.append(1)
    with pytest.raises(ChannelClosed, match="shutting down"):
        c.send("b", b"x")
    with pytest.raises(ChannelClosed, match="shutting down"):
        c.recv("c")
