"""`comet-client prepare` and batches of any size, over real sockets (tiny model, dealer)."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest

from common.protocol.session import PROTOCOL_VERSION
from proto import comet_pb2 as pb
from proto import comet_pb2_grpc as pb_grpc
from tests.e2e.harness import ROOT, Server, _env, client_json
from tests.models import tiny_classifier

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

DEALER = "--allow-insecure-dealer"
TEXTS = ("what a great day", "this is awful, I hate it", "ok", "meh, could be better")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("srv")
    args = ("--model", str(model_dir), DEALER, "--max-batch", "2", "--prepared-dir", str(tmp / "p"))
    with Server(tmp, *args) as s:
        s.store = tmp / "p"
        yield s


def client(*args: str) -> subprocess.CompletedProcess:
    """comet-client with a subcommand first (`--quiet` goes after it)."""
    if args[0] == "prepare":
        args = ("prepare", "--quiet", *args[1:])
    elif args[0] != "prepared":
        args = ("--quiet", *args)
    cmd = [sys.executable, "-m", "comet_client", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)


def _start(address: str, **start) -> pb.PreparedAnswer:
    """A raw session: Hello, Start(**start); the server's PreparedAnswer."""
    with grpc.insecure_channel(address) as ch:
        msgs = [
            pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION)),
            pb.ClientMessage(start=pb.Start(**start)),
        ]
        stream = pb_grpc.CometStub(ch).Session(iter(msgs), timeout=60)
        assert next(stream).WhichOneof("kind") == "welcome"
        msg = next(stream)
        assert msg.WhichOneof("kind") == "prepared"
        return msg.prepared


def test_prepared_runs_are_online_only_used_once_and_equal_inline_runs(
    server, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("COMET_HOME", str(tmp_path / "home"))
    # Without sets: 4 texts on a server taking 2 → 2 batches, results in input order.
    inline = client_json("--server", server.address, DEALER, *TEXTS)
    assert [len(b["texts"]) for b in inline["batches"]] == [2, 2]
    assert all(b["prepared"] is None for b in inline["batches"])
    assert any("ran inline" in n for n in inline["notes"])
    assert inline["cost"]["offline"]["bytes_sent"] > 0
    res = client("prepare", "--server", server.address, DEALER, "--batch", "2",
                 "--length", "16", "--count", "2")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "prepared 2 set(s) of 2 × 16" in res.stdout
    listed = client("prepared")
    assert "2 × 16" in listed.stdout and listed.returncode == 0
    server_sets = sorted(p.name for p in (server.store / "ready").iterdir())
    assert len(server_sets) == 2
    out = client_json("--server", server.address, DEALER, *TEXTS)
    used = [b["prepared"] for b in out["batches"]]
    assert all(used) and sorted(f"{u}.npz" for u in used) == server_sets
    # Online only: no offline traffic at all.
    assert out["cost"]["offline"]["bytes_sent"] == out["cost"]["offline"]["bytes_received"] == 0
    assert out["label"] == inline["label"]
    np.testing.assert_allclose(out["output"], inline["output"], atol=2e-3)
    # Consumed on both sides; a second use of an id is refused by the server.
    assert list((server.store / "ready").iterdir()) == []
    assert client("prepared").stdout.count("2 × 16") == 0
    again = _start(server.address, batch=2, seq_len=16, attention_mask=b"\x01" * 32,
                   output="logits", prepared_id=used[0])  # fmt: skip
    assert not again.accepted and "already used" in again.reason


def test_refused_sets_fall_back_to_the_inline_offline_phase(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMET_HOME", str(tmp_path / "home"))
    res = client("prepare", "--server", server.address, DEALER, "--batch", "2", "--length", "16")
    assert res.returncode == 0, res.stderr
    (sid_file,) = (server.store / "ready").iterdir()
    # The server refuses its set for another shape, with the reason.
    other = _start(server.address, batch=2, seq_len=32, attention_mask=b"\x01" * 64,
                   output="logits", prepared_id=sid_file.stem)  # fmt: skip
    assert not other.accepted and "2 × 16, not 2 × 32" in other.reason
    assert sid_file.exists()  # a refused set is not consumed
    sid_file.unlink()  # the server lost its half (e.g. expired)
    out = client_json("--server", server.address, DEALER, *TEXTS[:2])
    assert out["batches"][0]["prepared"] is None
    assert any("cannot use prepared set" in n and "inline" in n for n in out["notes"])
    assert out["cost"]["offline"]["bytes_sent"] > 0
    assert client("prepared").stdout.count("2 × 16") == 0  # the client's half was consumed


def test_too_long_texts_are_named_or_truncated(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMET_HOME", str(tmp_path / "home"))
    long = "word " * 80
    res = client("--server", server.address, DEALER, "fine", long)
    assert res.returncode == 2 and "text #2" in res.stderr and "--truncate" in res.stderr
    out = client_json("--server", server.address, DEALER, "--truncate", "fine", long)
    assert len(out["label"]) == 2


def test_hidden_lengths_with_a_prepared_set(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMET_HOME", str(tmp_path / "home"))
    res = client("prepare", "--server", server.address, DEALER, "--batch", "2", "--length", "16",
                 "--hide-lengths")  # fmt: skip
    assert res.returncode == 0, res.stderr
    shown = client_json("--server", server.address, DEALER, *TEXTS[:2])
    hidden = client_json("--server", server.address, DEALER, "--hide-lengths", *TEXTS[:2])
    assert shown["batches"][0]["prepared"] is None  # that set is for hidden lengths only
    assert hidden["batches"][0]["prepared"]
    np.testing.assert_allclose(hidden["output"], shown["output"], atol=2e-3)
    assert "batch 2 × 16 tokens" in server.text()


def test_a_client_set_for_another_plan_is_refused_clearly(server, tmp_path, monkeypatch) -> None:
    # The client plans after sending Start (so that both parties plan at once); a set
    # whose plan no longer matches this client's is then already named and consumed:
    # the run stops with a clear error and the next run goes inline.
    import json

    from common.protocol.prepared import META

    home = tmp_path / "home"
    monkeypatch.setenv("COMET_HOME", str(home))
    res = client("prepare", "--server", server.address, DEALER, "--batch", "2", "--length", "16")
    assert res.returncode == 0, res.stderr
    (path,) = (home / "prepared" / "ready").iterdir()
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays[META].tobytes().decode())
    meta["plan_digest"] = "f" * 64
    arrays[META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    bad = client("--server", server.address, DEALER, *TEXTS[:2])
    assert bad.returncode != 0
    assert "another plan" in bad.stderr and "discarded" in bad.stderr
    assert client("prepared").stdout.count("2 × 16") == 0
    for f in (server.store / "ready").iterdir():
        f.unlink(missing_ok=True)  # the server's half, if its session has not claimed it yet
    out = client_json("--server", server.address, DEALER, *TEXTS[:2])
    assert out["batches"][0]["prepared"] is None and out["label"]
