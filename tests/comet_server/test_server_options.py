"""The server's HTTP/2 policy must accept what the client does during long silences."""

from comet_server.server import grpc_options
from common.transport.stream import KEEPALIVE_MS


def test_server_accepts_the_clients_keepalive_pings():
    # gRPC's default server policy (one ping per 5 minutes without data, 2 strikes)
    # ended BERT-base sessions with GOAWAY "too_many_pings" during the HE offline phase.
    opts = dict(grpc_options())
    assert opts["grpc.http2.min_recv_ping_interval_without_data_ms"] < KEEPALIVE_MS
    assert opts["grpc.http2.max_ping_strikes"] == 0
