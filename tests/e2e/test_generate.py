"""Private generation over gRPC on real localhost sockets: a tiny random Llama (with a
character tokenizer) and a tiny BERT classifier served by one in-process server."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
import torch

from comet_client.generation import generate
from comet_client.session import CometError, Connection, infer
from common.mpc.roles import SERVER
from common.protocol.generate import Sampling, generate_party
from common.protocol.session import PROTOCOL_VERSION, InvalidInput
from common.transport import ProtocolMismatch, run_local
from common.transport.stream import StreamChannel
from proto import comet_pb2 as pb
from proto import comet_pb2_grpc as pb_grpc
from tests.e2e.harness import ROOT, _env
from tests.models import tiny_causal_lm_dir, tiny_classifier

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

PROMPT = "oB b(X"  # ids 81 36 2 68 10 58: greedy margins ≥ 0.25 (tests/protocol/test_decoder)
OTHER = "abcdef"  # the same length
LIMIT = 5  # the server's --max-new-tokens


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server (insecure dealer: fast) with the tiny decoder and a tiny classifier."""
    from comet_server.registry import load_models
    from comet_server.server import build_server
    from comet_server.service import Limits

    root = tmp_path_factory.mktemp("gen")
    lm_dir = tiny_causal_lm_dir(root / "lm")
    gpt_dir = tiny_causal_lm_dir(root / "gpt", family="gpt2")
    cls_dir = tiny_classifier(root / "cls")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMET_HOME", str(root / "home"))
        models = load_models([f"lm={lm_dir}", f"cls={cls_dir}", f"gpt={gpt_dir}"])
        again = load_models([f"lm={lm_dir}"])  # the decoder card comes from the cache
    assert again["lm"].compiled.card.digest() == models["lm"].compiled.card.digest()
    assert len(list((root / "home" / "cards").glob("lm-*.json"))) == 1
    server, service, port = build_server(
        models, "127.0.0.1", 0, provider="insecure_dealer",
        limits=Limits(max_new_tokens=LIMIT, session_timeout=60, handshake_timeout=60),
    )  # fmt: skip
    server.start()
    yield f"127.0.0.1:{port}", lm_dir, models
    service.shutdown()
    server.stop(grace=1).wait()


def test_gpt2_family_over_grpc_matches_transformers(served) -> None:
    address, lm_dir, _ = served
    gpt_dir = lm_dir.parent / "gpt"
    gen = generate(_conn(address), PROMPT, "gpt", 3, allow_insecure_dealer=True)
    assert gen.card.arch.family == "gpt2"
    assert gen.token_ids == _hf_greedy(gpt_dir, gen.prompt_ids, 3)


def test_list_models_names_the_kind(served) -> None:
    address, _, _ = served
    with grpc.insecure_channel(address) as ch:
        resp = pb_grpc.CometStub(ch).ListModels(pb.ListModelsRequest(), timeout=30)
    kinds = {m.name: (m.kind, m.head, m.max_positions) for m in resp.models}
    assert kinds == {"lm": ("decoder", "lm", 64), "cls": ("encoder", "classifier", 64),
                     "gpt": ("decoder", "lm", 64)}  # fmt: skip


def _hf_greedy(lm_dir, ids: list[int], new: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0,
        )  # fmt: skip
    return out[0, len(ids) :].tolist()


def client(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "comet_client", *args, "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)


def _conn(address: str) -> Connection:
    return Connection(address)


def test_private_generation_over_grpc_matches_transformers(served) -> None:
    address, lm_dir, _ = served
    pieces: list[str] = []
    gen = generate(_conn(address), PROMPT, "lm", LIMIT, allow_insecure_dealer=True,
                   on_text=pieces.append)  # fmt: skip
    assert gen.prompt_ids == [81, 36, 2, 68, 10, 58]
    assert gen.token_ids == _hf_greedy(lm_dir, gen.prompt_ids, LIMIT)
    assert "".join(pieces) == gen.text and len(pieces) == LIMIT  # streamed token by token
    c = gen.cost
    assert c["prefill"]["positions"] == 6 and len(c["tokens"]) == LIMIT - 1
    assert [s["context"] for s in c["tokens"]] == list(range(7, 6 + LIMIT))
    for s in [c["prefill"], *c["tokens"]]:
        for phase in ("offline", "online"):
            assert s[phase]["bytes_sent"] > 0 and s[phase]["rounds"] > 0
    # The metered payload is exactly what the transport moved.
    sent = sum(c["total"][p]["bytes_sent"] for p in ("setup", "offline", "online"))
    assert sent == gen.wire["payload_bytes_sent"]


def test_the_server_receives_no_tokens(served, monkeypatch) -> None:
    """What the server's channel receives: shares (ring), HE material, the plan digest,
    the masked one-hot rows of the private embedding, the exact truncations' padded top
    bits ("wrap") and one 1-byte continue flag per token — the same message sequence and
    sizes for another prompt of the same length sampled differently; the one-hot rows
    arrive masked (uniform bytes, not 0/1)."""
    address, _, _ = served
    views: list[list[tuple]] = []
    lookups: list[bytes] = []
    real = StreamChannel._get

    def spy(self, timeout, limit=None):
        f = real(self, timeout, limit)
        if self.party == SERVER:
            views[-1].append((f.tag, f.kind, f.shape, f.dtype, len(f.payload)))
            if f.tag == "lookup":
                lookups.append(f.payload)
        return f

    monkeypatch.setattr(StreamChannel, "_get", spy)
    for prompt, s in ((PROMPT, Sampling()), (OTHER, Sampling(0.9, top_k=5, seed=4))):
        views.append([])
        gen = generate(_conn(address), prompt, "lm", 3, s, allow_insecure_dealer=True)
        assert len(gen.token_ids) == 3
    assert views[0] == views[1] and views[0]
    arrays = [v for v in views[0] if v[1] == "array"]
    assert {v[0] for v in arrays} == {"gen.more", "plan.digest", "lookup", "wrap"}
    flags = [v for v in arrays if v[0] == "gen.more"]
    assert len(flags) == 3 and all(v[3] == "|u1" and v[4] == 1 for v in flags)
    # one lookup per call: 6 prompt rows, then 1 row per step, of 96 entries × 48 bits
    assert [v[4] for v in arrays if v[0] == "lookup"] == [6 * 96 * 6, 96 * 6, 96 * 6]
    assert {v[1] for v in views[0]} <= {"ring", "array", "bytes", "he-keys", "ciphertexts"}
    masked = np.frombuffer(b"".join(lookups), dtype=np.uint8)
    assert np.mean(masked == 0) < 0.02  # a one-hot in the clear: > 99% zero bytes
    assert abs(float(masked.mean()) - 127.5) < 5


def test_the_server_bounds_the_steps(served) -> None:
    address, _, models = served
    # Without a count the client asks for the server's limit (lower than its default).
    assert len(generate(_conn(address), PROMPT, "lm", allow_insecure_dealer=True).token_ids) == 5
    # The client's own check, before anything starts (the Welcome announces the limit).
    with pytest.raises(InvalidInput, match="limit of 5"):
        generate(_conn(address), PROMPT, "lm", LIMIT + 1, allow_insecure_dealer=True)
    # A client that skips it: the server refuses the Start.
    too_many = pb.Start(generate=pb.GenerateStart(prompt_len=6, max_new_tokens=99))
    with pytest.raises(grpc.RpcError) as e:
        _raw_start(address, "lm", too_many)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 5" in e.value.details()
    # A client that asks for one more step than agreed: the server's party stops it.
    compiled = models["lm"].compiled
    from common.mpc.preprocessing import make_provider

    def body(ch, role):
        if role == SERVER:
            return generate_party(ch, compiled.card, make_provider("insecure_dealer"), 6, 2,
                                  weights=compiled.weights)  # fmt: skip
        return generate_party(ch, compiled.card, make_provider("insecure_dealer"), 6, 4,
                              prompt_ids=[81, 36, 2, 68, 10, 58])  # fmt: skip

    with pytest.raises(ProtocolMismatch, match="more than the 2 tokens agreed"):
        run_local(body, (SERVER,), (1,))


def _raw_start(address: str, model: str, start: pb.Start) -> None:
    """Hello → Welcome → `start`, then read until the server ends the stream."""
    msgs = [
        pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, model=model)),
        pb.ClientMessage(start=start),
    ]
    with grpc.insecure_channel(address) as ch:
        for _ in pb_grpc.CometStub(ch).Session(iter(msgs), timeout=60):
            pass


def test_wrong_kind_of_model_is_a_clean_error(served) -> None:
    address, _, _ = served
    with pytest.raises(CometError, match="not a decoder") as e:
        generate(_conn(address), PROMPT, "cls", 2, allow_insecure_dealer=True)
    assert e.value.code == "FAILED_PRECONDITION"
    with pytest.raises(CometError, match="is a decoder") as e:
        infer(_conn(address), ["hello"], "lm", allow_insecure_dealer=True)
    # The server checks too, whatever the client does.
    for model, start, says in (
        ("cls", pb.Start(generate=pb.GenerateStart(prompt_len=3, max_new_tokens=2)),
         "not a decoder"),
        ("lm", pb.Start(batch=1, seq_len=3, attention_mask=b"\x01" * 3), "is a decoder"),
    ):  # fmt: skip
        with pytest.raises(grpc.RpcError) as e:
            _raw_start(address, model, start)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and says in e.value.details()
    # The server still serves (one classification after the refusals).
    res = infer(_conn(address), ["hello"], "cls", allow_insecure_dealer=True)
    assert res.labels is not None


def test_generate_command(served) -> None:
    address, lm_dir, _ = served
    ref = _hf_greedy(lm_dir, [81, 36, 2, 68, 10, 58], 3)
    args = ["generate", "--server", address, "--model", "lm", "--allow-insecure-dealer",
            "--max-new-tokens", "3"]  # fmt: skip
    res = client(*args, "--json", PROMPT)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["prompt"] == PROMPT and out["token_ids"] == ref
    assert set(out["cost"]) >= {"prefill", "per_token", "tokens", "setup", "total"}
    assert out["cost"]["per_token"]["online"]["rounds"] > 0
    res = client(*args, PROMPT)  # the terminal form: the text, then the cost table
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(out["text"]) and "prefill" in res.stdout
    assert "per token" in res.stdout
    res = client(*args[:-1], "9", PROMPT)  # over the server's limit: a clean error
    assert res.returncode == 2 and "limit of 5" in res.stderr


def test_greedy_margins_hold_for_the_served_card(served) -> None:
    """The greedy test above means something: the served card's float program picks the
    same tokens as transformers with margins above its error."""
    from common.protocol.generate import plain_generate

    _, lm_dir, models = served
    toks, logs = plain_generate(models["lm"].compiled, [81, 36, 2, 68, 10, 58], LIMIT)
    assert toks == _hf_greedy(lm_dir, [81, 36, 2, 68, 10, 58], LIMIT)
    assert min(float(np.diff(np.sort(lg)[-2:])[0]) for lg in logs) > 0.2


def test_generation_over_grpc_with_the_he_offline_phase(tmp_path, monkeypatch) -> None:
    """The default provider: HE keys once per session, an HE offline phase per step."""
    from comet_server.registry import load_models
    from comet_server.server import build_server

    monkeypatch.setenv("COMET_HOME", str(tmp_path / "home"))
    lm_dir = tiny_causal_lm_dir(tmp_path / "lm1", layers=1)
    server, service, port = build_server(load_models([f"lm1={lm_dir}"]), "127.0.0.1", 0)
    server.start()
    try:
        gen = generate(_conn(f"127.0.0.1:{port}"), PROMPT[:4], max_new_tokens=2)
    finally:
        service.shutdown()
        server.stop(grace=1).wait()
    assert gen.token_ids == _hf_greedy(lm_dir, gen.prompt_ids, 2)
    assert gen.cost["setup"]["bytes_sent"] > 0  # the client's HE keys, once
    assert all(
        s["offline"]["bytes_sent"] > 1000 for s in [gen.cost["prefill"], *gen.cost["tokens"]]
    )
