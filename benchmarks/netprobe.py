"""Measure the network a benchmark got: round-trip time and throughput over TCP.

`serve` answers two requests on one port: b"p" + 1 byte → echo (ping), b"s" + 8-byte
length + that many bytes → one byte when all arrived (sink). `measure` runs pings and
one bulk transfer against it and returns what it saw, so the shaping a benchmark
claims is checked, not assumed.

    python -m benchmarks.netprobe serve --host 10.77.0.1 --port 50052
    python -m benchmarks.netprobe measure --target 127.0.0.1:50062
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import statistics
import struct
import time
from typing import Any


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        s = self.request
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            op = s.recv(1)
            if not op:
                return
            if op == b"p":
                s.sendall(_recv_exact(s, 1))
            elif op == b"s":
                (n,) = struct.unpack("!Q", _recv_exact(s, 8))
                left = n
                while left:
                    chunk = s.recv(min(left, 1 << 20))
                    if not chunk:
                        return
                    left -= len(chunk)
                s.sendall(b"k")
            else:
                return


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("probe peer closed")
        buf += chunk
    return buf


class ProbeServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int) -> None:
        super().__init__((host, port), _Handler)


def measure(host: str, port: int, pings: int = 20, bulk_bytes: int = 32 << 20) -> dict[str, Any]:
    """Median RTT (ms) of `pings` 1-byte round trips; throughput (Mbit/s) of one bulk send.

    The bulk figure is bytes / (time to the sink's acknowledgement − one RTT).
    """
    with socket.create_connection((host, port), timeout=60) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(pings):
            t = time.perf_counter()
            s.sendall(b"px")
            _recv_exact(s, 1)
            rtts.append(time.perf_counter() - t)
        rtt = statistics.median(rtts)
        payload = bytes(1 << 20)
        t = time.perf_counter()
        s.sendall(b"s" + struct.pack("!Q", bulk_bytes))
        left = bulk_bytes
        while left:
            n = min(left, len(payload))
            s.sendall(payload[:n])
            left -= n
        _recv_exact(s, 1)
        elapsed = max(time.perf_counter() - t - rtt, 1e-9)
    return {
        "rtt_ms": round(rtt * 1e3, 3),
        "rtt_min_ms": round(min(rtts) * 1e3, 3),
        "throughput_mbit": round(bulk_bytes * 8 / elapsed / 1e6, 1),
        "bulk_bytes": bulk_bytes,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="TCP RTT / throughput probe")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    m = sub.add_parser("measure")
    m.add_argument("--target", required=True, help="HOST:PORT")
    m.add_argument("--bulk-mb", type=int, default=32)
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        with ProbeServer(a.host, a.port) as srv:
            print("probe ready", flush=True)
            srv.serve_forever()
    else:
        host, port = a.target.rsplit(":", 1)
        print(json.dumps(measure(host, int(port), bulk_bytes=a.bulk_mb << 20)))


if __name__ == "__main__":
    main()
