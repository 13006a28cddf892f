"""A TCP forwarder that adds a fixed one-way delay in each direction (asyncio).

This kernel has no `netem`, so latency for the network benchmarks is added here: every
chunk read from one side is written to the other `delay` seconds after it arrived.
Chunks are pipelined (a queue per direction, written in order), so the delay adds
latency without limiting throughput: a round trip through the forwarder gains
2 × delay. Bandwidth is shaped separately (`tc tbf`, see `benchmarks.netshape`).

    python -m benchmarks.delay_forwarder --map 50061:10.77.0.1:50051 --delay-ms 20

prints `forwarding ready` on stdout once every listener is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass

CHUNK = 1 << 18


@dataclass(frozen=True)
class Mapping:
    listen_port: int
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Mapping:
        """`LISTEN_PORT:HOST:PORT`."""
        try:
            lp, host, port = text.rsplit(":", 2)
            return cls(int(lp), host.strip("[]"), int(port))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad mapping {text!r}: expected LISTEN_PORT:HOST:PORT"
            ) from None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> int:
    """Copy reader → writer, each chunk `delay` s after it arrived; returns bytes moved."""
    q: asyncio.Queue = asyncio.Queue()
    moved = 0

    async def pump() -> None:
        while True:
            data = await reader.read(CHUNK)
            q.put_nowait((time.monotonic() + delay, data))
            if not data:
                return

    async def drain() -> None:
        nonlocal moved
        while True:
            due, data = await q.get()
            # The event loop's timers have ~1 ms granularity (epoll): sleep for the bulk
            # of a long wait, then yield in a tight loop, so that sub-millisecond delays
            # (LAN: 0.4 ms each way) are kept rather than rounded up to 1 ms.
            wait = due - time.monotonic()
            if wait > 0.002:
                await asyncio.sleep(wait - 0.0015)
            while time.monotonic() < due:
                await asyncio.sleep(0)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            moved += len(data)

    p = asyncio.ensure_future(pump())
    try:
        await drain()
    finally:
        p.cancel()
    return moved


async def _handle(
    mapping: Mapping, delay: float, cr: asyncio.StreamReader, cw: asyncio.StreamWriter
) -> None:
    try:
        ur, uw = await asyncio.open_connection(mapping.host, mapping.port)
    except OSError:
        cw.close()
        return
    try:
        await asyncio.gather(_pipe(cr, uw, delay), _pipe(ur, cw, delay))
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        for w in (cw, uw):
            w.close()


async def serve(mappings: list[Mapping], delay: float, host: str = "127.0.0.1", ready=None) -> None:
    """Forward each mapping's `host:listen_port` to its target until cancelled."""
    servers = []
    for m in mappings:

        async def handler(r, w, m=m):
            await _handle(m, delay, r, w)

        servers.append(await asyncio.start_server(handler, host, m.listen_port))
    if ready is not None:
        ready([s.sockets[0].getsockname()[1] for s in servers])
    try:
        await asyncio.gather(*(s.serve_forever() for s in servers))
    finally:
        for s in servers:
            s.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--map", dest="maps", type=Mapping.parse, action="append", required=True,
                    help="LISTEN_PORT:HOST:PORT (repeatable; listen port 0 = any)")  # fmt: skip
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay per direction")
    ap.add_argument("--listen-host", default="127.0.0.1")
    a = ap.parse_args(argv)

    def ready(ports: list[int]) -> None:
        print("forwarding ready", *ports, flush=True)

    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(a.maps, a.delay_ms / 1000.0, a.listen_host, ready))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    sys.exit(0)


if __name__ == "__main__":
    main()
