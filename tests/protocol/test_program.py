"""The private forward pass of small random encoders vs their plaintext emulation and HF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.mpc.ring import FRAC_BITS
from common.protocol.calibrate import approx_for, compile_loaded
from common.protocol.card import ModelCard
from common.protocol.program import ClientInput
from common.protocol.run import local_private_forward, plain_forward

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny(family: str = "bert", classifier: bool = True, seed: int = 0):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(seed)
    common = dict(vocab_size=120, max_position_embeddings=64, num_labels=3)
    if family == "bert":
        cfg = BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            **common,
        )  # fmt: skip
        model = (BertForSequenceClassification if classifier else BertModel)(cfg)
    elif family == "roberta":
        cfg = RobertaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            pad_token_id=1, **common,
        )  # fmt: skip
        model = RobertaForSequenceClassification(cfg)
    else:
        cfg = DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **common)
        model = DistilBertForSequenceClassification(cfg)
    return model.eval(), cfg


def batches(rng: np.random.Generator, n: int = 4, length: int = 12) -> list[ClientInput]:
    out = []
    for _ in range(n):
        ids = rng.integers(3, 120, (2, length))
        mask = np.ones((2, length), dtype=np.int64)
        mask[1, length - 4 :] = 0
        out.append(ClientInput(ids, mask))
    return out


def hf_logits(model, inp: ClientInput) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(inp.token_ids), attention_mask=torch.tensor(inp.attention_mask)
        )
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_reference_emulation_matches_transformers(family: str, tmp_path) -> None:
    model, cfg = tiny(family)
    rng = np.random.default_rng(0)
    compiled = compile_loaded(model, cfg, approx_for(tmp_path), batches(rng), "tiny")
    inp = batches(rng, 1)[0]
    want = hf_logits(model, inp)
    got = plain_forward(compiled, inp)
    assert np.max(np.abs(got - want)) < 0.05
    fixed = plain_forward(compiled, inp, FRAC_BITS)
    assert np.max(np.abs(fixed - want)) < 0.05


def test_private_forward_equals_fixed_point_emulation() -> None:
    model, cfg = tiny("bert")
    rng = np.random.default_rng(1)
    compiled = compile_loaded(model, cfg, approx_for(Path(".")), batches(rng), "t")
    inp = batches(rng, 1)[0]
    emul = plain_forward(compiled, inp, FRAC_BITS)
    server, client = local_private_forward(compiled, inp, provider="insecure_dealer")
    assert server.output is None
    assert client.output is not None
    assert np.max(np.abs(client.output - emul)) < 5e-3
    # Labelled per layer and op; the card survives a JSON round trip.
    by_layer = client.meter.breakdown(by=("layer",))
    assert {("embed",), ("layer0",), ("layer1",), ("head",)} <= set(by_layer)
    ops = {k[0] for k in client.meter.breakdown(by=("op",))}
    assert {"linear", "matmul", "softmax", "gelu", "layernorm", "embed"} <= ops
    card2 = ModelCard.from_json(compiled.card.to_json())
    assert card2.to_json() == compiled.card.to_json()


@pytest.mark.slow
def test_private_forward_with_he_preprocessing() -> None:
    model, cfg = tiny("bert", classifier=False)
    rng = np.random.default_rng(2)
    compiled = compile_loaded(model, cfg, approx_for(Path(".")), batches(rng, 2, 6), "t")
    inp = ClientInput(rng.integers(3, 120, (1, 6)), np.ones((1, 6), dtype=np.int64))
    emul = plain_forward(compiled, inp, FRAC_BITS)
    _, client = local_private_forward(compiled, inp, provider="he")
    assert np.max(np.abs(client.output - emul)) < 5e-3
    want = hf_logits(model, inp)
    cos = np.sum(client.output * want) / np.linalg.norm(client.output) / np.linalg.norm(want)
    assert cos > 0.999


def test_card_weight_bound_sizes_the_linear_masks() -> None:
    """The card carries the largest weight's binary exponent; the plan turns it into
    the bound on the encoded linear weights, which takes the linear masks from four
    CRT primes (the generic 2^28 bound) to three, and the server refuses weights over
    it."""
    from common.he.crt_bfv import CrtBfvParams
    from common.mpc.he_protocols import matmul_layout
    from common.mpc.preprocessing import HeProvider
    from common.mpc.roles import SERVER
    from common.protocol.card import linear_weight_bits, weight_log2_of
    from common.protocol.run import plan_forward
    from common.transport import run_local

    model, cfg = tiny("bert")
    rng = np.random.default_rng(3)
    compiled = compile_loaded(model, cfg, approx_for(Path(".")), batches(rng), "t")
    card = compiled.card
    top = max(float(np.abs(w).max()) for w in compiled.weights.values() if np.ndim(w) == 2)
    assert 2.0 ** (card.weight_log2 - 1) < top <= 2.0**card.weight_log2
    assert weight_log2_of({"a": np.array([[0.3, -4.0]])}) == 2
    bits = linear_weight_bits(card, FRAC_BITS)
    assert bits == card.weight_log2 + FRAC_BITS + 1
    keep = np.ones((1, 8), dtype=bool)
    planned = plan_forward(SERVER, card, (1, 8), keep, compiled.weights, None)
    plans = list(planned.segments().values())
    assert {p.weight_bits for p in plans} == {bits}
    params = CrtBfvParams()
    spec = next(s for p in plans for s in p.linears)
    assert matmul_layout(params, (spec.rows, spec.k, spec.n), 28)[0] == 4
    assert matmul_layout(params, (spec.rows, spec.k, spec.n), bits)[0] == 3
    # weights beyond the card's bound are refused, with the bound in the message
    plan = next(p for p in plans if p.linears)
    big = {s.key: np.full((s.k, s.n), 1 << bits, np.int64) for s in plan.linears}

    def body(ch):
        return HeProvider().generate(ch, plan, big if ch.party == SERVER else None)

    with pytest.raises(Exception, match=f"2\\^{bits}"):
        run_local(body)
