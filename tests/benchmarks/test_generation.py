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
