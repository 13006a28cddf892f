"""comet-server and comet-client as subprocesses over real localhost sockets."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.mpc.ring import FRAC_BITS
from common.protocol.session import PROTOCOL_VERSION
from proto import comet_pb2 as pb
from proto import comet_pb2_grpc as pb_grpc
from tests.e2e.harness import ROOT, Forwarder, Server, client, client_json, client_popen
from tests.models import tiny_classifier

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

TEXTS = ("what a great day", "this is awful, I hate it")
DEALER = "--allow-insecure-dealer"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """A test server whose offline phase is the (insecure) dealer: fast."""
    with Server(tmp_path_factory.mktemp("srv"), "--model", str(model_dir), DEALER) as s:
        yield s


@pytest.fixture(scope="module")
def compiled(model_dir):
    from common.protocol.calibrate import compile_model

    return compile_model(model_dir)


def _inputs(tok, texts):
    from common.protocol.program import ClientInput

    enc = tok(list(texts), padding=True, return_tensors="np")
    return ClientInput(enc["input_ids"].astype(np.int64), enc["attention_mask"])


def _healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        resp = stub.Check(health_pb2.HealthCheckRequest(service="comet.v1.Comet"), timeout=10)
        return resp.status == health_pb2.HealthCheckResponse.SERVING


def test_result_equals_the_in_process_protocol(server, compiled) -> None:
    from common.protocol.run import local_private_forward, plain_forward

    model, tok = compiled
    out = client_json("--server", server.address, DEALER, *TEXTS)
    assert out["card_digest"] == model.card.digest()
    got = np.asarray(out["output"])
    inp = _inputs(tok, TEXTS)
    _, local = local_private_forward(model, inp, provider="insecure_dealer")
    # Same program, different random shares: equal up to truncation noise (2^-16 scale).
    np.testing.assert_allclose(got, local.output, atol=2e-3)
    np.testing.assert_allclose(got, plain_forward(model, inp, FRAC_BITS), atol=2e-3)
    assert out["label"] == [["negative", "positive"][i] for i in got.argmax(-1)]
    assert np.allclose(np.asarray(out["probabilities"]).sum(-1), 1.0)
    for phase in ("offline", "online"):
        cost = out["cost"][phase]
        assert {"bytes_sent", "bytes_received", "rounds", "seconds", "layers"} <= set(cost)
        names = [r["name"] for r in cost["layers"]]
        assert names == ["embed", "layer0", "layer1", "head"]
        assert sum(r["bytes_sent"] for r in cost["layers"]) == cost["bytes_sent"]


def test_saved_report_and_its_chart(server, tmp_path) -> None:
    import json
    import sys

    report = tmp_path / "report.json"
    res = client("--server", server.address, DEALER, "--save-report", str(report), TEXTS[0])
    assert res.returncode == 0, res.stderr
    assert "offline" in res.stdout and "online" in res.stdout  # the human cost table
    saved = json.loads(report.read_text())
    assert saved["label"] and saved["cost"]["online"]["layers"][0]["name"] == "embed"
    png = tmp_path / "chart.png"
    cmd = [sys.executable, "-m", "benchmarks.cli", "report", str(report), "-o", str(png)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_metering_equals_the_bytes_on_the_socket(server) -> None:
    fwd = Forwarder(server.port)
    try:
        out = client_json("--server", f"127.0.0.1:{fwd.port}", DEALER, TEXTS[0])
        time.sleep(0.5)  # let the forwarder drain the last segments
    finally:
        fwd.close()
    cost, wire = out["cost"], out["transport"]
    metered_sent = sum(cost[p]["bytes_sent"] for p in ("setup", "offline", "online"))
    metered_recv = sum(cost[p]["bytes_received"] for p in ("setup", "offline", "online"))
    # The meter counts exactly the payload the transport moved ...
    assert metered_sent == wire["payload_bytes_sent"]
    assert metered_recv == wire["payload_bytes_received"]
    # ... and the socket carried that plus framing (HTTP/2, protobuf, handshake, the
    # tokenizer files in the welcome): a small, bounded overhead.
    assert metered_sent <= fwd.up <= 1.05 * metered_sent + 64_000
    assert metered_recv <= fwd.down <= 1.05 * metered_recv + 1_500_000


def test_two_concurrent_clients(server, compiled) -> None:
    from common.protocol.run import plain_forward

    model, tok = compiled
    procs = [
        client_popen("--json", "--quiet", "--server", server.address, DEALER, t) for t in TEXTS
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for (stdout, stderr), p, text in zip(outs, procs, TEXTS, strict=True):
        assert p.returncode == 0, stderr
        import json

        got = np.asarray(json.loads(stdout)["output"])
        np.testing.assert_allclose(
            got, plain_forward(model, _inputs(tok, [text]), FRAC_BITS), atol=2e-3
        )


def test_clear_errors_for_bad_requests(server, model_dir) -> None:
    cases = [
        (("--model", "nope", "hello"), 1, "unknown model 'nope'; this server serves: tiny"),
        (("",), 2, "empty input"),
        (("word " * 100,), 2, "text too long for model 'tiny'"),
        (("--output", "hidden", *TEXTS), 1, "PERMISSION_DENIED"),  # default: logits only
    ]
    for args, code, message in cases:
        res = client("--server", server.address, DEALER, *args)
        assert res.returncode == code, res.stderr
        assert message in res.stderr + res.stdout
    res = client("--server", server.address, "hello")  # no --allow-insecure-dealer
    assert res.returncode == 1 and "NOT secure" in res.stderr
    res = client("--server", "127.0.0.1:1", "hello")
    assert res.returncode == 1 and "cannot reach the server" in res.stderr
    res = client("--server", "10.255.255.1:50051", "hello")
    assert res.returncode == 1 and "refusing a plaintext channel" in res.stderr


def _session(address: str, messages: list, timeout: float = 30) -> grpc.RpcError:
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.CometStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Session(iter(messages), timeout=timeout))
        return e.value


def test_protocol_errors_get_status_codes(server) -> None:
    hello = pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION))
    e = _session(server.address, [pb.ClientMessage(hello=pb.Hello(protocol_version=99))])
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "protocol version mismatch" in e.details()
    e = _session(server.address, [pb.ClientMessage(start=pb.Start(batch=1, seq_len=4))])
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "expected Hello" in e.details()
    e = _session(server.address, [pb.ClientMessage()])
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in e.details()
    bad_mask = pb.Start(batch=1, seq_len=4, attention_mask=b"\x01\x01")
    e = _session(server.address, [hello, pb.ClientMessage(start=bad_mask)])
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "attention mask" in e.details()
    big = pb.Start(batch=9, seq_len=4, attention_mask=b"\x01" * 36)
    e = _session(server.address, [hello, pb.ClientMessage(start=big)])
    assert "exceeds this server's limit" in e.details()
    # A frame where the protocol expects its first HE setup message with other bytes.
    start = pb.Start(batch=1, seq_len=4, attention_mask=b"\x01" * 4, output="logits")
    junk = pb.Frame(seq=0, tag="junk", data=b"\x00" * 10)
    e = _session(
        server.address, [hello, pb.ClientMessage(start=start), pb.ClientMessage(frame=junk)]
    )
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "expected message #0" in e.details()
    # Oversized message: refused by gRPC itself, the server carries on.
    huge = pb.Frame(seq=0, tag="x", data=b"\x00" * (8 << 20))
    e = _session(
        server.address, [hello, pb.ClientMessage(start=start), pb.ClientMessage(frame=huge)]
    )
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _healthy(server.address)


def test_garbage_bytes_leave_the_server_healthy(server) -> None:
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 64):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(junk)
            with contextlib.suppress(OSError):
                s.recv(1024)
    assert _healthy(server.address)
    assert client_json("--server", server.address, DEALER, TEXTS[0])["label"]


def test_killed_client_leaves_the_server_healthy(model_dir, tmp_path) -> None:
    # The real HE offline phase: slow enough to kill the client in the middle of it.
    with Server(tmp_path, "--model", str(model_dir)) as srv:
        p = client_popen("--server", srv.address, TEXTS[0])
        deadline = time.monotonic() + 120
        while "batch 1 ×" not in srv.text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        p.kill()
        p.wait()
        deadline = time.monotonic() + 60
        while "client gone" not in srv.text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "client gone" in srv.text()
        assert _healthy(srv.address)
        out = client_json("--server", srv.address, TEXTS[1])  # HE, end to end
        assert out["cost"]["offline"]["bytes_sent"] > 1_000_000  # real ciphertexts
        assert "ended after" in srv.text() and srv.text().rstrip().count(": ok") == 1
        assert srv.stop() == 0, srv.text()[-5000:]


def test_session_limit_and_stall_deadline(model_dir, tmp_path) -> None:
    args = ("--model", str(model_dir), DEALER, "--max-sessions", "1", "--handshake-timeout", "8")
    with Server(tmp_path, *args) as srv:
        with grpc.insecure_channel(srv.address) as ch:
            stub = pb_grpc.CometStub(ch)
            hello = pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION))

            def stall():
                yield hello
                time.sleep(30)

            stalled = stub.Session(stall(), timeout=60)
            assert next(stalled).WhichOneof("kind") == "welcome"
            e = _session(srv.address, [hello])
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "server busy" in e.details()
            with pytest.raises(grpc.RpcError) as err:
                next(stalled)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no Start from the client within 8 s" in err.value.details()
        assert client_json("--server", srv.address, DEALER, TEXTS[0])["label"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_round_trip(model_dir, tmp_path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    args = ("--model", str(model_dir), DEALER, "--tls-cert", str(cert), "--tls-key", str(key))
    with Server(tmp_path, *args) as srv:
        out = client_json("--server", f"localhost:{srv.port}", "--tls-ca", str(cert), DEALER, "hi")
        assert out["label"]
        # A client without the CA cannot complete the handshake.
        other = tmp_path / "other.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(tmp_path / "k2.pem"), "-out", str(other), "-subj", "/CN=localhost"],
            check=True, capture_output=True,
        )  # fmt: skip
        res = client("--server", f"localhost:{srv.port}", "--tls-ca", str(other), DEALER, "hi")
        assert res.returncode == 1


def test_server_refuses_plaintext_on_a_public_interface(model_dir, tmp_path) -> None:
    with pytest.raises(RuntimeError, match="refusing a plaintext channel"):
        Server(tmp_path, "--model", str(model_dir), "--host", "0.0.0.0")
