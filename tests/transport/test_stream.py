"""StreamChannel (the gRPC end): chunking, reassembly, limits, typed frames."""

from __future__ import annotations

import queue

import numpy as np
import pytest

from common.transport import ChannelClosed, ProtocolMismatch
from common.transport.stream import StreamChannel, StreamReader
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
