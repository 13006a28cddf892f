"""Soak: concurrent honest clients interleaved with misbehaving ones (issue 12).

Loopback only, the insecure dealer and a tiny model: bounded in count (8 honest
sessions, 8 misbehaving ones, two rounds) and in time (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from common.mpc.ring import FRAC_BITS
from common.protocol.session import PROTOCOL_VERSION
from proto import comet_pb2 as pb
from proto import comet_pb2_grpc as pb_grpc
from tests.e2e.harness import Server, client_json, client_popen
from tests.models import tiny_classifier

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

DEALER = "--allow-insecure-dealer"
HELLO = pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION))
START = pb.ClientMessage(
    start=pb.Start(batch=1, seq_len=4, attention_mask=b"\x01" * 4, output="logits")
)
TEXTS = [f"text number {i} is {'good' if i % 2 else 'bad'}" for i in range(8)]
RSS_BOUND = 2 << 30  # bytes: the server's peak RSS (model, torch, 16 sessions' buffers)


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _session_threads(pid: int) -> list[str]:
    names = [p.read_text().strip() for p in Path(f"/proc/{pid}/task").glob("*/comm")]
    return [n for n in names if n.startswith(("comet-session", "comet-stream"))]


def _raw(address: str, messages, timeout: float = 60) -> str:
    """Run one raw session; returns the status code name it ended with."""
    with grpc.insecure_channel(address) as ch:
        try:
            for _ in pb_grpc.CometStub(ch).Session(messages, timeout=timeout):
                pass
            return "OK"
        except grpc.RpcError as e:
            return e.code().name


def _junk():
    yield HELLO
    yield START
    for i in range(400):  # 400 MiB pushed as fast as the server lets us
        yield pb.ClientMessage(frame=pb.Frame(seq=i, tag="junk", data=b"\0" * (1 << 20)))


def _stalled_writer():
    yield HELLO
    yield START
    time.sleep(40)


def _hello_only():
    yield HELLO
    time.sleep(40)


def _oversized():
    yield HELLO
    yield START
    yield pb.ClientMessage(frame=pb.Frame(seq=0, tag="x", data=b"\0" * (8 << 20)))


def _stalled_reader(address: str) -> str:
    with grpc.insecure_channel(address) as ch:
        stream = pb_grpc.CometStub(ch).Session(iter([HELLO, START]), timeout=60)
        next(stream)
        time.sleep(20)  # never reads further
        return "stalled"


MISBEHAVIOURS = {
    "junk frames": lambda a: _raw(a, _junk()),
    "stalled writer": lambda a: _raw(a, _stalled_writer()),
    "hello only": lambda a: _raw(a, _hello_only()),
    "oversized announce": lambda a: _raw(a, _oversized()),
    "wrong version": lambda a: _raw(
        a, iter([pb.ClientMessage(hello=pb.Hello(protocol_version=99))])
    ),
    "stalled reader": _stalled_reader,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("tiny") / "tiny")


def test_soak(model_dir, tmp_path) -> None:
    from common.protocol.calibrate import compile_model
    from common.protocol.program import ClientInput
    from common.protocol.run import plain_forward

    model, tok = compile_model(model_dir)
    args = ("--model", str(model_dir), DEALER, "--max-sessions", "24",
            "--session-timeout", "5", "--handshake-timeout", "20")  # fmt: skip
    with Server(tmp_path, *args) as srv:
        pid = srv.proc.pid
        client_json("--server", srv.address, DEALER, "warm up")
        threads0 = _status(pid, "Threads")
        outcomes: dict[str, list[str]] = {k: [] for k in MISBEHAVIOURS}
        outcomes["vanish mid-offline"] = []
        for _round in range(2):
            honest = [
                client_popen("--json", "--quiet", "--server", srv.address, DEALER, t) for t in TEXTS
            ]
            bad = [
                threading.Thread(
                    target=lambda k=k, f=f: outcomes[k].append(f(srv.address)), daemon=True
                )
                for k, f in MISBEHAVIOURS.items()
            ]
            for t in bad:
                t.start()
            vanish = client_popen("--quiet", "--server", srv.address, DEALER, "vanishing text")
            time.sleep(1.5)
            vanish.kill()
            vanish.wait()
            outcomes["vanish mid-offline"].append("killed")
            for p, text in zip(honest, TEXTS, strict=True):
                out, err = p.communicate(timeout=300)
                assert p.returncode == 0, err
                enc = tok([text], padding=True, return_tensors="np")
                inp = ClientInput(enc["input_ids"].astype(np.int64), enc["attention_mask"])
                want = plain_forward(model, inp, FRAC_BITS)
                np.testing.assert_allclose(json.loads(out)["output"], want, atol=2e-3)
            for t in bad:
                t.join(120)
                assert not t.is_alive()
        assert outcomes["wrong version"] == ["FAILED_PRECONDITION"] * 2
        assert outcomes["oversized announce"] == ["RESOURCE_EXHAUSTED"] * 2
        assert outcomes["hello only"] == ["DEADLINE_EXCEEDED"] * 2
        assert outcomes["stalled writer"] == ["DEADLINE_EXCEEDED"] * 2
        assert set(outcomes["junk frames"]) == {"INVALID_ARGUMENT"}
        # Every session has ended: no session worker or reader thread is left behind
        # (gRPC's handler pool keeps its grown threads; those are not per session).
        deadline = time.monotonic() + 30
        while _session_threads(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        threads = _status(pid, "Threads")
        peak = _status(pid, "VmHWM") * 1024
        assert _session_threads(pid) == [], (threads0, threads)
        assert peak < RSS_BOUND, peak
        assert client_json("--server", srv.address, DEALER, "still serving")["label"]
        print(f"soak: 16 honest sessions, {sum(map(len, outcomes.values()))} misbehaving; "
              f"peak RSS {peak / 2**20:.0f} MiB; threads {threads0} → {threads}")  # fmt: skip
    assert srv.proc.returncode == 0
