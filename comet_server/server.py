"""Build and run the gRPC server (service, health checking, TLS or explicit plaintext)."""

from __future__ import annotations

import ipaddress
import logging
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from comet_server.registry import ServedModel
from comet_server.service import CometService, Limits
from common.he.executor import HeExecutor
from common.protocol.prepared import PreparedStore
from common.transport.stream import CHUNK_BYTES, KEEPALIVE_MS
from proto import comet_pb2_grpc as pb_grpc

log = logging.getLogger("comet.server")

SERVICE_NAME = "comet.v1.Comet"
MAX_MESSAGE_BYTES = 4 * CHUNK_BYTES  # a chunk plus headers; the Welcome's tokenizer files


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def grpc_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # The client pings every 30 s through long silent stretches of the offline phase
        # (minutes of HE work at BERT-base size); gRPC's default server policy (one ping
        # per 5 min, 2 strikes) would end the session with GOAWAY "too_many_pings".
        ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MS // 3),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def build_server(
    models: dict[str, ServedModel],
    host: str,
    port: int,
    provider: str = "he",
    limits: Limits | None = None,
    tls: tuple[Path, Path] | None = None,
    insecure: bool = False,
    executor: HeExecutor | None = None,
    prepared: PreparedStore | None = None,
) -> tuple[grpc.Server, CometService, int]:
    """A started-ready (not yet started) server; returns (server, service, bound port).

    Plaintext only with `insecure` or on a loopback host; otherwise `tls` = (cert, key).
    """
    if tls is None and not insecure and not is_loopback(host):
        raise ValueError(
            f"refusing a plaintext channel on {host}: give --tls-cert/--tls-key, or --insecure "
            "to accept that traffic (and the model's public card) is unencrypted"
        )
    limits = limits or Limits()
    service = CometService(models, provider, limits, executor, prepared)
    # One thread per session stream plus health checks and ListModels.
    pool = futures.ThreadPoolExecutor(max_workers=limits.max_sessions + 8)
    server = grpc.server(
        pool, options=grpc_options(), maximum_concurrent_rpcs=limits.max_sessions + 16
    )
    pb_grpc.add_CometServicer_to_server(service, server)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    for name in ("", SERVICE_NAME):
        hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{host}:{port}"
    if tls is not None:
        cert, key = (Path(p).read_bytes() for p in tls)
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    return server, service, bound
