"""Output bounds on the card, and the client's check of an opened output against them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.mpc import engine
from common.mpc.roles import SERVER
from common.protocol.calibrate import approx_for, compile_loaded
from common.protocol.card import ModelCard
from common.protocol.outcheck import FailedInference, UncheckedOutputWarning, check_output
from common.protocol.run import local_private_forward
from common.protocol.session import card_for_output
from common.transport import NullChannel
from tests.protocol.families import random_checkpoint, random_inputs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from common.protocol.hf import load_hf

    path = random_checkpoint("bert", True, tmp_path_factory.mktemp("m"))
    model, cfg = load_hf(path)
    rng = np.random.default_rng(0)
    return compile_loaded(model, cfg, approx_for(path), random_inputs("bert", rng, 4), "t")


def _input():
    return random_inputs("bert", np.random.default_rng(5), 1)[0]


def test_card_carries_bounds_that_survive_json(compiled) -> None:
    b = compiled.card.sites.output
    assert b is not None and b.logits is not None
    assert b.hidden[0] < 0 < b.hidden[1] and 0 < b.hidden_norm[0] < b.hidden_norm[1]
    card = ModelCard.from_json(compiled.card.to_json())
    assert card.sites.output == b
    assert card.digest() == compiled.card.digest()


@pytest.mark.parametrize("kind", ["logits", "hidden"])
def test_correct_private_runs_pass(compiled, kind: str) -> None:
    inp = _input()
    model = compiled if kind == "logits" else _hidden(compiled)
    _, client = local_private_forward(model, inp, provider="insecure_dealer")
    check_output(compiled.card, kind, client.output, inp.attention_mask)


def _hidden(compiled):
    from common.protocol.card import CompiledModel

    return CompiledModel(card_for_output(compiled.card, "hidden"), compiled.weights)


def _fail_one_truncation(monkeypatch, at: int) -> None:
    """The server's `at`-th online truncation round fails on one element, as a SecureML
    local truncation does with probability |v|/2^64 (and an exact one for |v| ≥ 2^62):
    off by 2^(64 − bits)."""
    calls = {"n": 0}
    trunc_many = engine.Mpc.trunc_many

    def failing(self, items):
        ys = trunc_many(self, items)
        if self.party == SERVER and not isinstance(self.ch, NullChannel) and items:
            calls["n"] += 1
            if calls["n"] == at:
                y = ys[0] = ys[0].copy()
                shift = 64 - items[0][1]
                y.flat[0] = (int(y.flat[0]) + (1 << shift)) % (1 << 64)
        return ys

    monkeypatch.setattr(engine.Mpc, "trunc_many", failing)


@pytest.mark.parametrize("kind", ["logits", "hidden"])
@pytest.mark.parametrize("at", [5, 60, 140])
def test_a_failed_truncation_is_reported(compiled, monkeypatch, kind: str, at: int) -> None:
    inp = _input()
    model = compiled if kind == "logits" else _hidden(compiled)
    _fail_one_truncation(monkeypatch, at)
    _, client = local_private_forward(model, inp, provider="insecure_dealer")
    with pytest.raises(FailedInference, match="Run it again"):
        check_output(compiled.card, kind, client.output, inp.attention_mask)


def test_a_corrupted_output_share_is_reported(compiled, monkeypatch) -> None:
    inp = _input()
    reveal = engine.Mpc.reveal_ring

    def corrupt(self, x, to=None):
        if self.party == SERVER:
            x = x.copy()
            x.flat[0] = (int(x.flat[0]) + (1 << 50)) % (1 << 64)
        return reveal(self, x, to)

    monkeypatch.setattr(engine.Mpc, "reveal_ring", corrupt)
    _, client = local_private_forward(compiled, inp, provider="insecure_dealer")
    with pytest.raises(FailedInference, match="logit"):
        check_output(compiled.card, "logits", client.output, inp.attention_mask)


def test_old_cards_load_and_warn(compiled) -> None:
    d = json.loads(compiled.card.to_json())
    del d["sites"]["output"]
    card = ModelCard.from_json(json.dumps(d))
    assert card.sites.output is None
    with pytest.warns(UncheckedOutputWarning, match="no output bounds"):
        check_output(card, "logits", np.full((1, 3), 1e12), np.ones((1, 4)))


def test_non_finite_and_padding(compiled) -> None:
    card = compiled.card
    b = card.sites.output
    with pytest.raises(FailedInference, match="not finite"):
        check_output(card, "logits", np.array([[np.nan, 0.0, 0.0]]), np.ones((1, 2)))
    d = 32
    h = np.zeros((1, 3, d))
    h[0, :, 0] = np.mean(b.hidden_norm)  # a plausible state at real tokens
    h[0, 2, :] = 1e9  # a padded position: not part of the answer
    check_output(card, "hidden", h, np.array([[1, 1, 0]]))
    with pytest.raises(FailedInference, match="hidden-state"):
        check_output(card, "hidden", h, np.array([[1, 1, 1]]))
