"""`comet-bench generate` on a tiny random Llama in place of SmolLM2 (the real one takes
minutes to compile): the commands' bookkeeping, not the model."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import generation
from benchmarks.cli import main
from tests.models import tiny_causal_lm


@pytest.fixture
def tiny(monkeypatch):
    from common.protocol.decoder_hf import compile_decoder

    model, cfg = tiny_causal_lm("llama")
    model.generation_config.pad_token_id = 0
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 96, size=int(rng.integers(4, 24))).tolist() for _ in range(12)]
    compiled = compile_decoder(model, cfg, prompts, "tiny", max_context=64)

    def tok(text):  # a stand-in tokenizer: one id per character
        return {"input_ids": [3 + ord(c) % 90 for c in text[:8]]}

    monkeypatch.setattr(generation, "_load", lambda say: (compiled, tok, model))
    return compiled


def test_generate_fidelity_and_cost_commands(tiny):
    r = CliRunner().invoke(main, ["generate", "fidelity", "--tokens", "3"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    assert len(out["prompts"]) == len(generation.PROMPTS)
    for row in out["prompts"]:
        assert 0 <= row["identical"] <= row["tokens"] == 3 and row["max_logit_err"] >= 0
    r = CliRunner().invoke(main, ["generate", "cost", "--tokens", "2"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    assert [c["kind"] for c in out["calls"]] == ["prefill", "token"]
    assert all(c["online_bytes"] > 0 and c["online_rounds"] > 0 for c in out["calls"])
    assert len(out["token_ids"]) == 2


def test_generate_offline_command_counts_one_step_per_kind(tiny):
    """The HE offline phase of one token step alone: every kind it produces carries
    bytes both ways, and its elements are the plan's."""
    r = CliRunner().invoke(main, ["generate", "offline", "--context", "6", "--he-workers", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    kinds = {k["kind"]: k for k in out["kinds"]}
    assert {"linear-masks", "matmul-triples", "wraps"} <= set(kinds)
    for k in kinds.values():
        assert k["bytes_up"] > 0 and k["bytes_down"] > 0 and k["elements"] > 0
    t = out["totals"]
    c = out["control"]
    assert t["bytes_up"] == sum(k["bytes_up"] for k in kinds.values()) + c["bytes_up"]
    assert t["bytes_down"] == sum(k["bytes_down"] for k in kinds.values()) + c["bytes_down"]
    assert 0 <= c["bytes_up"] < 1024 and 0 <= c["bytes_down"] < 1024
    # One position: every linear site has one row; the head is among them.
    assert all(rows == 1 for _, rows, _, _ in out["linear_sites"])
    assert out["linear_macs_by_site"]["lm head"] > 0


@pytest.mark.slow
def test_generate_net_on_loopback(tmp_path, monkeypatch):
    """Two processes on loopback (the dealer): the prompt has exactly the asked length,
    every call reports its online lower bound, and the tokens are transformers'."""
    from tests.models import tiny_causal_lm_dir

    monkeypatch.setenv("COMET_HOME", str(tmp_path / "home"))
    d = tiny_causal_lm_dir(tmp_path / "lm")
    res = generation.net("none", 5, 2, "insecure_dealer", lambda m: None, model=f"lm={d}")
    assert res["prompt_tokens"] == 5 and len(res["token_ids"]) == 2
    assert [c["kind"] for c in res["calls"]] == ["prefill", "token"]
    for c in res["calls"]:
        o = c["online"]
        assert o["rounds"] > 0 and o["bytes"] == o["bytes_sent"] + o["bytes_received"]
        assert 0 <= o["lower_bound_s"] == max(o["transfer_s"], o["latency_s"])
    assert res["calls"][1]["context"] == 6
