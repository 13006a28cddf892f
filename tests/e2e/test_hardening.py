"""Issue 12: a session's time, size and outputs are bounded; shutdown is prompt."""

from __future__ import annotations

import signal
import time

import grpc
import pytest

from common.protocol.session import PROTOCOL_VERSION
from proto import comet_pb2 as pb
from proto import comet_pb2_grpc as pb_grpc
from tests.e2e.harness import Server, client, client_json, client_popen
from tests.models import tiny_classifier

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

DEALER = "--allow-insecure-dealer"
HELLO = pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("tiny") / "tiny")


def test_hello_only_connection_loses_its_slot(model_dir, tmp_path) -> None:
    # Old code: a Hello-only client held its slot for --session-timeout (600 s).
    args = ("--model", str(model_dir), DEALER, "--max-sessions", "1", "--handshake-timeout", "1")
    with Server(tmp_path, *args) as srv, grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.CometStub(ch)

        def hello_only():
            yield HELLO
            time.sleep(60)

        t0 = time.monotonic()
        stream = stub.Session(hello_only(), timeout=60)
        assert next(stream).WhichOneof("kind") == "welcome"
        with pytest.raises(grpc.RpcError) as e:
            next(stream)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no Start from the client within 1 s" in e.value.details()
        assert time.monotonic() - t0 < 30
        # The slot is free again (the limit is 1 session).
        e2 = next(stub.Session(iter([HELLO]), timeout=30))
        assert e2.WhichOneof("kind") == "welcome"


def test_output_policy_and_token_limit(model_dir, tmp_path) -> None:
    with Server(tmp_path, "--model", str(model_dir), DEALER, "--max-tokens", "6") as srv:
        # Old code: a classifier's hidden states were given to anyone who asked.
        res = client("--server", srv.address, DEALER, "--output", "hidden", "hi")
        assert res.returncode == 1 and "[PERMISSION_DENIED]" in res.stderr
        assert "does not give 'hidden' outputs" in res.stderr
        # Old code: only batch and length were checked.
        res = client("--server", srv.address, DEALER, "one two three", "four five six seven")
        assert res.returncode == 1 and "[RESOURCE_EXHAUSTED]" in res.stderr
        assert "exceeds this server's limit of 6 tokens" in res.stderr
        assert client_json("--server", srv.address, DEALER, "hi")["label"]
    # Old code: only batch × length was checked; now the plan's memory estimate too.
    with Server(tmp_path, "--model", str(model_dir), DEALER, "--session-memory", "4096") as srv:
        res = client("--server", srv.address, DEALER, "hi")
        assert res.returncode == 1 and "[RESOURCE_EXHAUSTED]" in res.stderr
        assert "KiB one session may use" in " ".join(res.stderr.split())
    with Server(tmp_path, "--model", str(model_dir), DEALER, "--outputs", "both") as srv:
        out = client_json("--server", srv.address, DEALER, "--output", "hidden", "hi")
        assert out["output_kind"] == "hidden"


def test_sigterm_during_he_work_ends_sessions_and_exits(model_dir, tmp_path) -> None:
    # Old code: SIGTERM waited for the sessions' HE work (grace period, then the
    # executor's exit join) and the client got no reason.
    srv = Server(tmp_path, "--model", str(model_dir))
    try:
        p = client_popen("--quiet", "--server", srv.address, "some words to classify")
        deadline = time.monotonic() + 120
        while "batch 1 ×" not in srv.text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # inside the HE offline phase
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=30)
        assert time.monotonic() - t0 < 10, srv.text()[-3000:]
        _, err = p.communicate(timeout=60)
        assert p.returncode == 1
        assert "[UNAVAILABLE]" in err and "shutting down" in err, err
    finally:
        srv.stop()
