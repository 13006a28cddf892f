"""`comet-bench net`: comet-server and comet-client as two processes over a shaped network.

Profile `none` runs both on loopback. `lan` / `wan` put the server and the client in two
network namespaces joined by a veth pair shaped with `tc tbf` (`benchmarks.netshape`);
the client reaches the server through the delay forwarder (`benchmarks.delay_forwarder`,
RTT/2 per direction) in its own namespace. Before the inference, `benchmarks.netprobe`
measures the RTT and throughput the client actually gets through the same path; both
are in the result, beside the nominal profile.

Each result row (one model × approximation set × profile) holds offline and online
bytes (both directions), rounds and seconds from the client's cost report; for the
measured network, `estimate_s` = max(sent, received) / bandwidth + rounds × RTT/2 (our
rounds count one-way message hops — a Lamport clock — so each costs half a round trip)
and `lower_bound_s` = the larger of the two terms (a pipelined run can beat their sum,
never their maximum); per-layer rows, and the accuracy of the private output against the plaintext
model (max abs error, cosine, label agreement).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.netprobe import ProbeServer, measure
from benchmarks.netshape import CLIENT_IP, PROFILES, SERVER_IP, Profile, ShapedLink

ROOT = Path(__file__).resolve().parents[1]
COMET_PORT, PROBE_PORT = 50051, 50052
FWD_COMET, FWD_PROBE = 50061, 50062
MODELS = ("default", "original", "bert-tiny", "bert-base", "bert-base-1l")
_TEXT = (
    "the new phone arrived two days late and the box was damaged but honestly the screen "
    "is gorgeous the battery lasts all day and support answered within minutes"
)
WORDS = tuple(_TEXT.split())


def resolve(model: str) -> Path:
    """default / original (bundled), bert-tiny / bert-base (synthetic shapes), or a DIR."""
    from benchmarks.shapes import SHAPES, shape_dir

    if model in SHAPES:
        return shape_dir(model)
    from benchmarks.model import resolve_model

    return resolve_model(model)


def texts_of_length(tokenizer: Any, seq_len: int, batch: int) -> list[str]:
    """`batch` different texts that each tokenize to exactly `seq_len` tokens."""
    out = []
    for b in range(batch):
        words = [WORDS[(b * 7 + i) % len(WORDS)] for i in range(seq_len)]
        n = len(words)
        while n > 0:
            text = " ".join(words[:n])
            if len(tokenizer(text)["input_ids"]) <= seq_len:
                break
            n -= 1
        # Pad with single-token words until the length is exact.
        while len(tokenizer(text)["input_ids"]) < seq_len:
            text += " the"
        if len(tokenizer(text)["input_ids"]) != seq_len:
            raise ValueError(f"cannot build a text of exactly {seq_len} tokens")
        out.append(text)
    return out


def _tokenizer(model_dir: Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait_listening(proc: subprocess.Popen, log: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"listening on \S+:(\d+)", log.read_text())
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"comet-server exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"comet-server did not start within {timeout:g} s")


def _wait_line(proc: subprocess.Popen, marker: str, timeout: float = 30) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if marker in line:
            return line
        if not line and proc.poll() is not None:
            raise RuntimeError(f"helper exited before {marker!r}")
    raise RuntimeError(f"no {marker!r} within {timeout:g} s")


def transfer_and_latency(
    sent: int, received: int, rounds: int, net: dict[str, float]
) -> tuple[float, float]:
    """(bytes at the measured bandwidth, rounds at half the measured RTT), in seconds.

    Each direction has its own bandwidth (tbf on both veth ends), so the transfer term
    is the larger direction. Our rounds count one-way message hops (Lamport clock), so
    each costs half a round trip.
    """
    bw = net["throughput_mbit"] * 1e6 / 8
    return max(sent, received) / bw, rounds * net["rtt_ms"] / 2e3


def lower_bound(sent: int, received: int, rounds: int, net: dict[str, float]) -> float:
    """Seconds no implementation can beat on `net`: max(transfer, latency).

    (Their sum, `estimate_s`, is what a protocol that never overlaps sending with
    waiting would take; a pipelined run can beat it.)
    """
    return max(transfer_and_latency(sent, received, rounds, net))


def accuracy(model_dir: Path, approx: str, texts: list[str], out: dict[str, Any]) -> dict:
    """Private output vs transformers' plaintext forward of the same function."""
    from benchmarks.model import plaintext_output
    from common.protocol.program import ClientInput

    tok = _tokenizer(model_dir)
    enc = tok(texts, padding=True, return_tensors="np")
    inp = ClientInput(enc["input_ids"].astype(np.int64), enc["attention_mask"])
    want = plaintext_output(model_dir, approx, inp)
    got = np.asarray(out["output"], dtype=np.float64)
    g, w = got.ravel(), want.ravel()
    res = {
        "max_abs_err": float(np.abs(g - w).max()),
        "cosine": float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w))),
    }
    if got.ndim == 2:
        res["label_agreement"] = float((got.argmax(-1) == want.argmax(-1)).mean())
    return res


def _phase_row(cost: dict[str, Any], net: dict[str, float]) -> dict[str, Any]:
    s, r = cost["bytes_sent"], cost["bytes_received"]
    return {
        "bytes": s + r,
        "bytes_sent": s,
        "bytes_received": r,
        "rounds": cost["rounds"],
        "seconds": cost["seconds"],
        "lower_bound_s": round(lower_bound(s, r, cost["rounds"], net), 3),
        "estimate_s": round(sum(transfer_and_latency(s, r, cost["rounds"], net)), 3),
    }


@contextmanager
def serving(
    profile: Profile, srv_args: list[str], say: Callable[[str], None]
) -> Iterator[tuple[list[str], str, dict[str, Any]]]:
    """A comet-server with `srv_args` reachable over `profile`; yields the command prefix
    that runs a Python module on the client's side, the target HOST:PORT, and the path
    the probe measured (RTT, throughput). Everything is torn down on exit."""
    env = _env()
    with tempfile.TemporaryDirectory(prefix="comet-net-") as tmp:
        log = Path(tmp) / "server.log"
        if profile.shaped or profile.rtt_ms:
            bed = ShapedLink(profile)
            with bed, log.open("w") as logf:
                say(f"[{profile.name}] namespaces {bed.server_ns} / {bed.client_ns}, "
                    f"tbf {profile.rate_mbit:g} Mbit/s, "
                    f"delay {profile.one_way_ms:g} ms each way")  # fmt: skip
                py = sys.executable
                srv = bed.spawn(bed.server_ns, [py, "-m", "comet_server", "--host", SERVER_IP,
                                "--port", str(COMET_PORT), "--insecure", *srv_args],
                                stdout=logf, stderr=logf, env=env, cwd=ROOT)  # fmt: skip
                probe = bed.spawn(bed.server_ns, [py, "-m", "benchmarks.netprobe", "serve",
                                  "--host", SERVER_IP, "--port", str(PROBE_PORT)],
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)  # fmt: skip
                _wait_line(probe, "probe ready")
                bulk = "256" if profile.rate_mbit and profile.rate_mbit > 1000 else "32"

                def forwarder(delay_ms: float) -> subprocess.Popen:
                    p = bed.spawn(bed.client_ns, [py, "-m", "benchmarks.delay_forwarder",
                                  "--map", f"{FWD_COMET}:{SERVER_IP}:{COMET_PORT}",
                                  "--map", f"{FWD_PROBE}:{SERVER_IP}:{PROBE_PORT}",
                                  "--delay-ms", f"{delay_ms:g}"],
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)  # fmt: skip
                    _wait_line(p, "forwarding ready")
                    return p

                def probe_path(mb: str) -> dict[str, Any]:
                    done = subprocess.run(
                        ["ip", "netns", "exec", bed.client_ns, py, "-m", "benchmarks.netprobe",
                         "measure", "--target", f"127.0.0.1:{FWD_PROBE}", "--bulk-mb", mb],
                        capture_output=True, text=True, env=env, cwd=ROOT, check=True,
                    )  # fmt: skip
                    return json.loads(done.stdout)

                # The forwarder itself adds some latency (a Python hop): measure it with
                # no delay and add only what is missing to reach the profile's RTT.
                say("calibrating the delay forwarder …")
                fwd = forwarder(0.0)
                base = probe_path("1")["rtt_ms"]
                fwd.terminate()
                fwd.wait()
                one_way = max(0.0, (profile.rtt_ms - base) / 2)
                forwarder(one_way)
                say("measuring the path (RTT, throughput) …")
                net = probe_path(bulk)
                net["forwarder_base_rtt_ms"] = base
                net["added_one_way_ms"] = round(one_way, 3)
                say(f"measured: RTT {net['rtt_ms']} ms, {net['throughput_mbit']} Mbit/s; "
                    "waiting for the server (compiling the model) …")  # fmt: skip
                _wait_listening(srv, log, 1800)
                yield ["ip", "netns", "exec", bed.client_ns, py], f"127.0.0.1:{FWD_COMET}", net
        else:
            probe_srv = ProbeServer("127.0.0.1", 0)
            threading.Thread(target=probe_srv.serve_forever, daemon=True).start()
            try:
                net = measure("127.0.0.1", probe_srv.server_address[1], bulk_bytes=256 << 20)
            finally:
                probe_srv.shutdown()
                probe_srv.server_close()
            say(f"[none] loopback: RTT {net['rtt_ms']} ms, {net['throughput_mbit']} Mbit/s")
            with log.open("w") as logf:
                srv = subprocess.Popen(
                    [sys.executable, "-m", "comet_server", "--port", "0", *srv_args],
                    stdout=logf, stderr=logf, env=env, cwd=ROOT,
                )  # fmt: skip
                try:
                    port = _wait_listening(srv, log, 1800)
                    yield [sys.executable], f"127.0.0.1:{port}", net
                finally:
                    srv.terminate()
                    try:
                        srv.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        srv.kill()


def run_one(
    model: str,
    profile: Profile,
    approx: str,
    seq_len: int,
    batch: int,
    provider: str = "he",
    say: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """One private inference of `model` over `profile`; returns the result row."""
    model_dir = resolve(model)
    texts = texts_of_length(_tokenizer(model_dir), seq_len, batch)
    dealer = ["--allow-insecure-dealer"] if provider == "insecure_dealer" else []
    srv_args = ["--model", f"{model}={model_dir}", "--approx", approx, "--max-batch",
                str(max(batch, 8)), "--session-timeout", "3600", *dealer]  # fmt: skip
    with serving(profile, srv_args, say) as (prefix, target, net):
        out, wall = _client(prefix, target, model, texts, dealer, _env(), say)
    cost = out["cost"]
    return {
        "model": model,
        "approx": approx,
        "profile": profile.name,
        "nominal": {"rate_mbit": profile.rate_mbit, "rtt_ms": profile.rtt_ms},
        "measured": net,
        "seq_len": seq_len,
        "batch": batch,
        "provider": provider,
        "setup": _phase_row(cost["setup"], net),
        "offline": _phase_row(cost["offline"], net),
        "online": _phase_row(cost["online"], net),
        "client_wall_s": round(wall, 2),
        "accuracy": accuracy(model_dir, approx, texts, out),
        "layers": {p: cost[p]["layers"] for p in ("offline", "online")},
    }


def _client(
    prefix: list[str],
    target: str,
    model: str,
    texts: list[str],
    extra: list[str],
    env: dict[str, str],
    say: Callable[[str], None],
) -> tuple[dict[str, Any], float]:
    say(f"private inference: {len(texts)} text(s) …")
    t = time.perf_counter()
    done = subprocess.run(
        [*prefix, "-m", "comet_client", "--server", target, "--model", model, "--json",
         "--quiet", "--timeout", "3600", "--buckets", "none", *extra, *texts],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"comet-client failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout), wall


def run_net(
    model: str,
    profile: str,
    seq_len: int,
    batch: int,
    approx: str,
    provider: str = "he",
    say: Callable[[str], None] = lambda m: None,
) -> list[dict[str, Any]]:
    """Rows for `approx` in (comet, reference, both); with both, a `ratio` row is added."""
    prof = PROFILES[profile]
    sets = ("comet", "reference") if approx == "both" else (approx,)
    rows = [run_one(model, prof, a, seq_len, batch, provider, say) for a in sets]
    if len(rows) == 2:
        c, r = rows
        rows.append({
            "model": model, "profile": profile, "ratio": "reference / comet",
            **{p: {k: round(r[p][k] / c[p][k], 3) if c[p][k] else None
                   for k in ("bytes", "rounds", "seconds")} for p in ("offline", "online")},
        })  # fmt: skip
    return rows


__all__ = ["CLIENT_IP", "MODELS", "PROFILES", "run_net", "run_one"]
