"""The server's HTTP/2 policy must accept what the client does during long silences."""

from comet_server.server import grpc_options
from common.transport.stream import KEEPALIVE_MS


def test_server_accepts_the_clients_keepalive_pings():
    # gRPC's default server policy (one ping per 5 minutes without data, 2 strikes)
    # ended BERT-base sessions with GOAWAY "too_many_pings" during the HE offline phase.
    opts = dict(grpc_options())
    assert opts["grpc.http2.min_recv_ping_interval_without_data_ms"] < KEEPALIVE_MS
    assert opts["grpc.http2.max_ping_strikes"] == 0


def test_session_deadline_follows_the_plan():
    """A session's total deadline: per token·layer until it is planned, then from the
    plan's HE work (masked coefficients returned) and its online token·layers."""
    import time

    import pytest

    from comet_server import service as sv

    svc = sv.CometService.__new__(sv.CometService)
    svc.limits = sv.Limits(session_timeout=20.0, handshake_timeout=5.0, max_sessions=2)
    assert svc._work_seconds(100.0) == 20.0 + 2 * 5.0 + 2 * 100.0
    # the default model at 2×8 tokens against BERT-base at 128: the wider model's plan
    # gets the longer deadline, whatever their token counts
    small = svc._work_seconds(sv.HE_COEFFICIENT_SECONDS * 2**24.4 + 16 * 6)
    wide = svc._work_seconds(sv.HE_COEFFICIENT_SECONDS * 2**29.5 + 128 * 12)
    assert wide > 30 * small > 0
    d = sv._Deadline(0.05)
    d.check()
    time.sleep(0.08)
    with pytest.raises(sv.SessionDeadline, match="deadline"):
        d.check()
    d.reset(60.0)
    d.check()
