"""What one protocol round costs on loopback, without the program (issue 13).

Two processes, one gRPC bidirectional stream, the session's thread layout on both ends
(server: a `StreamReader` into an `Inbox`, a worker thread, a response generator fed
from a queue; client: a request generator fed from a queue and a `StreamReader`), and
either bare messages (`--mode bare`: a small `ClientMessage`/`ServerMessage` echoed) or
the real `StreamChannel` doing `exchange_array` of `--elements` uint64 values, as the
online phase does. Prints milliseconds per round.

    python benchmarks/round_cost.py --mode channel --rounds 2000 --elements 64
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import threading
import time
from concurrent import futures

import grpc
import numpy as np

from common.transport.stream import StreamChannel, StreamReader
from proto import comet_pb2 as pb

METHOD = "/comet.bench.Rounds/Session"


def _frame_of(msg):
    k = msg.WhichOneof("kind")
    return getattr(msg, k) if k else None


def _serve(port_q: mp.Queue, mode: str, rounds: int, elements: int) -> None:
    def handler(requests, context):
        reader = StreamReader(requests, _frame_of)
        out: queue.Queue = queue.Queue(maxsize=32)

        def work() -> None:
            try:
                if mode == "bare":
                    for _ in range(rounds):
                        reader.inbox.get(60)
                        out.put(pb.ServerMessage(frame=pb.Frame(tag="x")))
                    return
                ch = StreamChannel(0, reader.inbox, lambda f: out.put(pb.ServerMessage(frame=f)))
                for i in range(rounds):
                    got = ch.exchange_array("x", np.full(elements, i, np.uint64))
                    if not (got == i).all():
                        raise RuntimeError(f"round {i}: the client's array arrived wrong")
            finally:
                out.put(None)  # ends the stream: the client sees the peer leave

        threading.Thread(target=work, daemon=True).start()
        while (item := out.get()) is not None:
            yield item

    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "comet.bench.Rounds",
                {
                    "Session": grpc.stream_stream_rpc_method_handler(
                        handler,
                        pb.ClientMessage.FromString,
                        pb.ServerMessage.SerializeToString,
                    )
                },
            ),
        )
    )
    port_q.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    server.wait_for_termination(timeout=600)


def round_cost(mode: str = "channel", rounds: int = 2000, elements: int = 64) -> float:
    """Seconds per round of `rounds` rounds against a server in a child process. In
    "channel" mode each round's arrays carry the round's index and both ends check
    what they receive (a RuntimeError here if the client's does not match)."""
    # spawn, not fork: a child forked from a process whose gRPC threads already run
    # (any earlier channel in the same interpreter, as in the test suite) can hang
    # before it serves, and CI saw exactly that
    ctx = mp.get_context("spawn")
    port_q: mp.Queue = ctx.Queue()
    srv = ctx.Process(target=_serve, args=(port_q, mode, rounds, elements), daemon=True)
    srv.start()
    try:
        port = port_q.get(timeout=120)  # a cold spawn imports grpc and numpy afresh
    except queue.Empty:
        srv.terminate()
        raise RuntimeError("the round-cost server did not start within 120 s") from None
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.stream_stream(
        METHOD,
        request_serializer=pb.ClientMessage.SerializeToString,
        response_deserializer=pb.ServerMessage.FromString,
    )
    outbox: queue.Queue = queue.Queue(maxsize=32)

    def requests():
        while (item := outbox.get()) is not None:
            yield item

    reader = StreamReader(call(requests()), _frame_of)
    ch = StreamChannel(1, reader.inbox, lambda f: outbox.put(pb.ClientMessage(frame=f)))

    def one(i: int) -> None:
        if mode == "bare":
            outbox.put(pb.ClientMessage(frame=pb.Frame(tag="x")))
            reader.inbox.get(60)
            return
        got = ch.exchange_array("x", np.full(elements, i, np.uint64))
        if not (got == i).all():
            raise RuntimeError(f"round {i}: the server's array arrived wrong")

    try:
        t = time.perf_counter()
        for i in range(rounds):
            one(i)
        return (time.perf_counter() - t) / rounds
    finally:
        outbox.put(None)
        srv.terminate()
        srv.join(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("bare", "channel"), default="channel")
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--elements", type=int, default=64)
    a = p.parse_args()
    ms = round_cost(a.mode, a.rounds, a.elements) * 1e3
    print(f"{a.mode}: {a.rounds} rounds of {a.elements} elements, {ms:.3f} ms per round")


if __name__ == "__main__":
    main()
