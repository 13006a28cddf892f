import numpy as np
import pytest

from common.transport import ChannelClosed, Label, ProtocolMismatch, local_pair, run_local


def test_meter_totals_equal_bytes_passed():
    a, b = local_pair(timeout=5)
    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 5000, 40)
    for i, n in enumerate(sizes):
        with a.scope(phase="online", layer=f"L{i % 3}", op="x"):
            a.send("m", bytes(int(n)))
        with b.scope(phase="online", layer=f"L{i % 3}", op="x"):
            b.recv("m", int(n))
            b.send("r", b"12345")
        a.recv("r")
    assert a.meter.totals().sent_bytes == a.wire_bytes_out == int(sizes.sum())
    assert b.meter.totals().recv_bytes == a.wire_bytes_out
    assert b.meter.totals().sent_bytes == b.wire_bytes_out == 5 * len(sizes)
    bd = b.meter.breakdown(by=("layer",))
    assert sum(c.recv_bytes for c in bd.values()) == a.wire_bytes_out
    assert bd[("L0",)].recv_msgs == len(range(0, 40, 3))


def test_rounds_lamport_clock():
    def prog(ch):
        # one exchange (1 round), then a ping-pong of 3 messages (3 more rounds)
        ch.exchange_array("x", np.zeros(3))
        if ch.party == 0:
            ch.send("p", b"1")
            ch.recv("p")
            ch.send("p", b"3")
        else:
            ch.recv("p")
            ch.send("p", b"2")
            ch.recv("p")
        return ch.clock

    c0, c1 = run_local(prog)
    assert max(c0, c1) == 4


def test_tag_mismatch_fails_fast():
    a, b = local_pair(timeout=5)
    a.send("alpha", b"x")
    with pytest.raises(ProtocolMismatch, match="alpha"):
        b.recv("beta")


def test_size_mismatch_fails_fast():
    a, b = local_pair(timeout=5)
    a.send_array("arr", np.zeros(3, dtype=np.uint64))
    with pytest.raises(ProtocolMismatch, match="bytes"):
        b.recv_array("arr", (4,), np.uint64)


def test_tensors_are_typed_and_labelled():
    a, b = local_pair(timeout=5)
    with a.scope(phase="online", layer="layer3", op="ffn"):
        a.send_array("t", np.zeros((2, 6), dtype=np.uint64))
    f = b.recv_frame("t", 96)
    assert (f.kind, f.shape, f.dtype, f.label) == ("ring", (2, 6), "<u8", "online/layer3/ffn")
    # Same byte count, other shape or dtype: refused, not silently reinterpreted.
    a.send_array("t", np.zeros((3, 4), dtype=np.uint64))
    with pytest.raises(ProtocolMismatch, match=r"shape \(2, 6\), got <u8 \(3, 4\)"):
        b.recv_array("t", (2, 6), np.uint64)
    a.send_array("u", np.zeros(4, dtype=np.int64))
    with pytest.raises(ProtocolMismatch, match="<u8 tensor"):
        b.recv_array("u", (4,), np.uint64)


def test_peer_failure_propagates():
    def prog(ch):
        if ch.party == 0:
            raise ValueError("boom")
        return ch.recv("never")

    with pytest.raises(ValueError, match="boom"):
        run_local(prog, timeout=5)


def test_timeout_is_channel_closed():
    a, _ = local_pair(timeout=0.05)
    with pytest.raises(ChannelClosed):
        a.recv("x")


def test_scope_labels_and_time():
    a, _b = local_pair()
    with a.scope(phase="offline", op="he"):
        a.send("x", b"abc")
        with a.scope(layer="3"):
            a.send("y", b"de")
    bd = a.meter.breakdown()
    assert bd[("offline", "-", "he")].sent_bytes == 3
    assert bd[("offline", "3", "he")].sent_bytes == 2
    assert a.meter.current == Label()
