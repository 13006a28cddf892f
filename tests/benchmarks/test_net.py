"""The network benchmark's pieces: delay forwarder, tbf shaping, testbed, report."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from benchmarks.delay_forwarder import Mapping, serve
from benchmarks.net import lower_bound, transfer_and_latency
from benchmarks.netshape import PROFILES, NetUnavailable, ShapedLink, check_available, tbf_command


@pytest.fixture(scope="module")
def comet_home(tmp_path_factory):
    """The synthetic shapes are built into a scratch cache, not the user's."""
    return tmp_path_factory.mktemp("comet_home")


@pytest.fixture(autouse=True)
def _scratch_cache(comet_home, monkeypatch) -> None:
    monkeypatch.setenv("COMET_HOME", str(comet_home))


def _echo_server() -> socket.socket:
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return

            def echo(c: socket.socket = c) -> None:
                with c:
                    while data := c.recv(1 << 16):
                        c.sendall(data)

            threading.Thread(target=echo, daemon=True).start()

    threading.Thread(target=run, daemon=True).start()
    return srv


def _forwarder(target_port: int, delay: float) -> int:
    ports: list[int] = []
    ready = threading.Event()

    def cb(p: list[int]) -> None:
        ports.extend(p)
        ready.set()

    loop = asyncio.new_event_loop()
    threading.Thread(
        target=loop.run_until_complete,
        args=(serve([Mapping(0, "127.0.0.1", target_port)], delay, ready=cb),),
        daemon=True,
    ).start()
    assert ready.wait(10)
    return ports[0]


def _roundtrip(port: int, payload: bytes) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = time.perf_counter()
        threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
        got = bytearray()
        while len(got) < len(payload):
            chunk = s.recv(1 << 20)
            assert chunk, "forwarder closed early"
            got += chunk
        return bytes(got), time.perf_counter() - t


def test_forwarder_preserves_bytes_and_adds_the_delay() -> None:
    echo = _echo_server()
    try:
        port = _forwarder(echo.getsockname()[1], delay=0.05)
        payload = os.urandom(3 << 20)
        got, _ = _roundtrip(port, payload)
        assert got == payload  # order and content, both directions
        _, rtt = _roundtrip(port, b"x")
        assert rtt >= 2 * 0.05  # one delay each way
    finally:
        echo.close()


def test_mapping_parse() -> None:
    assert Mapping.parse("50061:10.77.0.1:50051") == Mapping(50061, "10.77.0.1", 50051)
    with pytest.raises(Exception, match="LISTEN_PORT:HOST:PORT"):
        Mapping.parse("nonsense")


def test_tbf_command_lines_follow_the_profile() -> None:
    assert tbf_command("cs1", PROFILES["lan"], "comet-s-1") == [
        "tc", "-n", "comet-s-1", "qdisc", "replace", "dev", "cs1", "root", "tbf",
        "rate", "3000mbit", "burst", "3750000", "latency", "50ms",
    ]  # fmt: skip
    wan = tbf_command("cc1", PROFILES["wan"])
    assert wan[wan.index("rate") + 1] == "200mbit"
    assert int(wan[wan.index("burst") + 1]) == 256 << 10  # the floor: 10 ms would be 250 kB
    assert (PROFILES["lan"].rtt_ms, PROFILES["wan"].rtt_ms) == (0.8, 40.0)
    with pytest.raises(ValueError):
        tbf_command("x", PROFILES["none"])


def test_testbed_commands_shape_both_directions() -> None:
    bed = ShapedLink(PROFILES["wan"], tag="123456789012345")
    cmds = bed.commands()
    assert all(len(d) <= 15 for d in bed.devs)  # Linux interface names
    tbf = [c for c in cmds if c[0] == "tc"]
    assert [c[c.index("dev") + 1] for c in tbf] == list(bed.devs)
    assert not [c for c in ShapedLink(PROFILES["none"]).commands() if c[0] == "tc"]


def test_clear_error_without_root_or_tools(monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetUnavailable, match="need root"):
        check_available()
    monkeypatch.setattr("shutil.which", lambda tool: None)
    with pytest.raises(NetUnavailable, match="`ip` not found"):
        check_available()


def test_testbed_cleans_up_on_error() -> None:
    try:
        check_available()
    except NetUnavailable as e:
        pytest.skip(str(e))
    bed = ShapedLink(PROFILES["lan"], tag=f"t{os.getpid()}")
    with pytest.raises(RuntimeError, match="boom"), bed:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert bed.server_ns in names and bed.client_ns in names
        qd = subprocess.run(["tc", "-n", bed.server_ns, "qdisc", "show"],
                            capture_output=True, text=True).stdout  # fmt: skip
        assert "tbf" in qd and "rate 3Gbit" in qd
        bed.spawn(bed.server_ns, ["sleep", "600"])
        raise RuntimeError("boom")
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert bed.server_ns not in names and bed.client_ns not in names
    assert not bed.procs


def test_lower_bound() -> None:
    net = {"throughput_mbit": 8.0, "rtt_ms": 10.0}  # 1 MB/s, 5 ms per one-way round
    assert transfer_and_latency(2_000_000, 1_000_000, 4, net) == pytest.approx((2.0, 0.02))
    assert lower_bound(2_000_000, 1_000_000, 4, net) == pytest.approx(2.0)
    assert lower_bound(1_000, 1_000, 1_000, net) == pytest.approx(5.0)


def test_texts_of_exact_length() -> None:
    from benchmarks.net import _tokenizer, resolve, texts_of_length

    tok = _tokenizer(resolve("bert-tiny"))
    for n in (8, 33):
        texts = texts_of_length(tok, n, 3)
        assert len(set(texts)) == 3
        assert all(len(tok(t)["input_ids"]) == n for t in texts)


@pytest.mark.slow
def test_profile_none_report_is_well_formed(tmp_path) -> None:
    import sys

    out = tmp_path / "net.jsonl"
    cmd = [sys.executable, "-m", "benchmarks.cli", "net", "--profile", "none", "--model",
           "bert-tiny", "--seq-len", "8", "--json", "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows == [json.loads(line) for line in out.read_text().splitlines()]
    (row,) = rows
    assert row["profile"] == "none" and row["approx"] == "comet" and row["provider"] == "he"
    assert row["measured"]["rtt_ms"] > 0 and row["measured"]["throughput_mbit"] > 0
    for phase in ("offline", "online"):
        p = row[phase]
        assert p["bytes"] == p["bytes_sent"] + p["bytes_received"] > 0
        assert 0 < p["lower_bound_s"] <= p["seconds"]
        assert p["lower_bound_s"] <= p["estimate_s"]
        assert sum(r["bytes_sent"] for r in row["layers"][phase]) == p["bytes_sent"]
    assert row["offline"]["bytes"] > 1_000_000  # HE ciphertexts
    assert row["accuracy"]["cosine"] > 0.999 and row["accuracy"]["label_agreement"] == 1.0
