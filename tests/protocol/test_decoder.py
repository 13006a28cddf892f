"""Private generation on tiny random Llama and GPT-2 models built here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from common.approx.backend import PlainBackend
from common.protocol.decoder import causal_keep, decoder_forward, rope_tables
from common.protocol.decoder_card import DecoderCard
from common.protocol.decoder_hf import compile_decoder
from common.protocol.generate import (
    Sampling,
    local_generate,
    plain_generate,
    sample_next,
)
from tests.models import tiny_causal_lm

warnings.filterwarnings("ignore", message="insecure_dealer")
PROMPT = [81, 36, 2, 68, 10, 58]  # greedy margins ≥ 0.25 on both tiny models
NEW = 6


def _calibration_prompts() -> list[list[int]]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 96, size=int(rng.integers(4, 24))).tolist() for _ in range(12)]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request):
    model, cfg = tiny_causal_lm(request.param)
    compiled = compile_decoder(model, cfg, _calibration_prompts(), "tiny", max_context=64)
    return model, compiled


def _hf_greedy(model, prompt: list[int], new: int) -> tuple[list[int], list[np.ndarray]]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=new, min_new_tokens=new, do_sample=False, output_logits=True,
            return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip
    return out.sequences[0, len(prompt) :].tolist(), [lg[0].double().numpy() for lg in out.logits]


def test_private_greedy_matches_transformers(lm) -> None:
    model, compiled = lm
    ref, ref_logits = _hf_greedy(model, PROMPT, NEW)
    server, client = local_generate(compiled, PROMPT, NEW)
    assert client.token_ids == ref
    err = max(float(np.abs(a - b).max()) for a, b in zip(client.logits, ref_logits, strict=True))
    # The test means something only if every greedy choice is clearer than the error
    # (fixed-point noise of a fresh random sharing: 0.03–0.11 seen on these models).
    margins = [float(np.diff(np.sort(lg)[-2:])[0]) for lg in ref_logits]
    assert err < 0.15 and min(margins) > 2 * err, (err, margins)
    assert server.token_ids == [] and server.logits == []
    assert [c.kind for c in client.costs] == ["prefill"] + ["token"] * (NEW - 1)
    assert [c.context for c in client.costs] == list(range(len(PROMPT), len(PROMPT) + NEW))


def test_kv_cache_gives_the_logits_of_a_recomputed_prefix(lm) -> None:
    _, compiled = lm
    card, w = compiled.card, compiled.weights
    seq = [*PROMPT, 11, 40, 7]
    ops = PlainBackend(None)
    with torch.no_grad():
        full, _ = decoder_forward(ops, card, 0, (1, len(seq)), 0, w, np.array([seq]), None)
        cached = None
        _, cache = decoder_forward(ops, card, 0, (1, 6), 0, w, np.array([seq[:6]]), None)
        for t in range(6, len(seq)):
            cached, cache = decoder_forward(ops, card, 0, (1, 1), t, w, np.array([[seq[t]]]), cache)
    assert cache.length == len(seq)
    np.testing.assert_allclose(cached, full, atol=1e-9)
    # Privately: the same tokens, and logits within fixed-point noise of each other.
    _, with_cache = local_generate(compiled, PROMPT, 3)
    _, recomputed = local_generate(compiled, PROMPT, 3, kv_cache=False)
    assert with_cache.token_ids == recomputed.token_ids
    # two private runs, each with its own truncation noise (measured up to 0.12 after
    # the rsqrt step caps; see test_fixed_point_emulation_tracks_the_private_run)
    for a, b in zip(with_cache.logits, recomputed.logits, strict=True):
        assert np.abs(a - b).max() < 0.2
    assert [c.positions for c in recomputed.costs] == [6, 7, 8]
    assert [c.positions for c in with_cache.costs] == [6, 1, 1]
    # The point of the cache: a step costs far less than recomputing the prefix.
    assert with_cache.costs[-1].online.sent_bytes < recomputed.costs[-1].online.sent_bytes / 2


def test_causal_mask() -> None:
    keep = causal_keep(2, 3, group=2)
    assert keep.shape == (1, 1, 6, 5)
    row = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=float)
    np.testing.assert_array_equal(keep[0, 0], np.vstack([row, row]))


def test_prefill_is_causal(lm) -> None:
    """The last-position logits of a prefix equal transformers' logits at that position
    of the whole sequence: later tokens do not leak backwards."""
    model, compiled = lm
    seq = [*PROMPT, 11, 40]
    with torch.no_grad():
        hf = model(torch.tensor([seq])).logits[0].double().numpy()
        ops = PlainBackend(None)
        for t in (2, 5, len(seq)):
            out, _ = decoder_forward(
                ops, compiled.card, 0, (1, t), 0, compiled.weights, np.array([seq[:t]]), None
            )
            assert np.abs(out[0] - hf[t - 1]).max() < 0.05


def test_rope_tables_match_transformers() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=32, num_attention_heads=4, max_position_embeddings=64)
    x = torch.randn(1, 4, 5, 8, dtype=torch.float64)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, torch.arange(3, 8)[None])
    ref, _ = apply_rotary_pos_emb(x, x, cos.double(), sin.double())
    c, s = rope_tables(10000.0, 8, 3, 5)
    half = torch.cat([x[..., 4:], x[..., :4]], dim=-1)
    np.testing.assert_allclose(
        (x * torch.tensor(c) + half * torch.tensor(s)).numpy(), ref.numpy(), atol=1e-6
    )


def test_card_round_trip(lm) -> None:
    _, compiled = lm
    card = compiled.card
    again = DecoderCard.from_json(card.to_json())
    assert again.to_json() == card.to_json() and again.digest() == card.digest()


def test_sampling_happens_on_the_client_only(lm) -> None:
    """The server's view (what it receives, message by message) does not depend on
    the prompt or on how the client samples; it never holds tokens or logits."""
    _, compiled = lm
    views = []
    for prompt, sampling in (
        (PROMPT, Sampling()),
        ([1, 2, 3, 4, 5, 6], Sampling(0.8, 5, 0.9, seed=3)),
    ):
        server, client = local_generate(compiled, prompt, 3, sampling)
        assert server.token_ids == [] and server.logits == [] and len(client.token_ids) == 3
        views.append(
            [(c.online.recv_bytes, c.online.recv_msgs, c.offline.recv_bytes) for c in server.costs]
        )
    assert views[0] == views[1]


def test_sample_next() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=50)
    top = int(np.argmax(logits))
    u = Sampling(seed=1).uniform_source()
    assert sample_next(logits, Sampling(), u) == top
    assert sample_next(logits, Sampling(1.0, top_k=1), u) == top
    assert sample_next(logits, Sampling(1.0, top_p=1e-6), u) == top
    a = [
        sample_next(logits, Sampling(1.0, seed=7), Sampling(seed=7).uniform_source())
        for _ in range(3)
    ]
    assert len(set(a)) == 1  # seeded: reproducible
    draws = Sampling(1.0, top_k=3, seed=2)
    src = draws.uniform_source()
    picks = [sample_next(logits, draws, src) for _ in range(2000)]
    top3 = np.argsort(-logits)[:3]
    assert set(picks) <= set(top3.tolist())
    p = np.exp(logits[top3] - logits[top3].max())
    p /= p.sum()
    freq = np.array([picks.count(int(t)) for t in top3]) / len(picks)
    assert np.abs(freq - p).max() < 0.04
    with pytest.raises(ValueError):
        Sampling(top_p=0.0)


def test_fixed_point_emulation_tracks_the_private_run(lm) -> None:
    _, compiled = lm
    toks, logs = plain_generate(compiled, PROMPT, 3, frac_bits=16)
    _, client = local_generate(compiled, PROMPT, 3)
    assert toks == client.token_ids
    # The private run's truncations differ from the emulation's by ±1 unit each; after
    # the rsqrt plans' step caps (issue #14) this was measured at 0.05–0.08 on this model
    # over 4 runs: 0.2 leaves room without hiding a real divergence (logits of order 10).
    err = max(float(np.abs(a - b).max()) for a, b in zip(logs, client.logits, strict=True))
    assert err < 0.2


@pytest.mark.slow
def test_private_generation_with_he() -> None:
    model, cfg = tiny_causal_lm("llama", layers=1)
    compiled = compile_decoder(model, cfg, _calibration_prompts(), "tiny", max_context=64)
    ref, _ = _hf_greedy(model, PROMPT[:4], 2)
    _, client = local_generate(compiled, PROMPT[:4], 2, provider="he")
    assert client.token_ids == ref
    assert all(c.offline.sent_bytes > 0 for c in client.costs)
