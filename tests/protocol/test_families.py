"""Every supported family and head against transformers' own forward.

Random checkpoints where every embedding, bias and norm parameter is far from its
neutral value (`tests/protocol/families.py`), three comparisons each:
1. The import, exactly: our program with the exact functions (`ExactSites`: 1/√x and
   softmax) in float64 against transformers in float64 whose GeLU is the reference
   set's form (the one function the reference set replaces by a fixed form): equal up
   to float rounding. Any weight the import drops or misplaces shows here.
2. The approximation: our float emulation (the card's plans) against transformers'
   unmodified forward, within the approximation's public error bounds.
3. Fixed point: the fixed-point emulation and a private run (insecure dealer) against
   transformers, within (2) plus the fixed-point rounding allowance.
The Comet set (bert, roberta: what `comet-adapt` supports) is checked the same way
against transformers patched into its Comet form.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from common.approx.backend import PlainBackend
from common.approx.forms import GELU_REF, TANH_REF
from common.mpc.ring import FRAC_BITS
from common.protocol.calibrate import ExactSites, approx_for, compile_loaded
from common.protocol.card import CompiledModel
from common.protocol.hf import load_hf
from common.protocol.program import ClientInput, encoder_forward
from common.protocol.run import local_private_forward, plain_forward
from tests.protocol.families import (
    FAMILIES,
    neutral_parameters,
    random_checkpoint,
    random_inputs,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CASES = [(f, c) for f in FAMILIES for c in (False, True)]
LAYERS = 2
# float64 through 2 layers of O(1) activations: ~1e-14; a dropped embedding row or
# bias moves outputs by O(0.1–1).
EXACT_TOL = 1e-9
# Fixed-point rounding: every truncation adds ≤ 1 unit of 2^-f (the local truncation
# one more, at random); a LayerNorm output carries the error of its input sum relative
# to σ, and the attention / FFN of a layer add a few such units: 2^5 units per layer
# (and one layer's worth for embeddings and head) bounds it with room (measured ≤ 2^4).
FIXED_TOL = 2.0 ** (5 - FRAC_BITS) * (LAYERS + 1)


def _hf_forward(model, inp: ClientInput, hidden: bool) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(inp.token_ids),
            attention_mask=torch.tensor(inp.attention_mask),
            output_hidden_states=True,
        )
    if hidden:
        return out.hidden_states[-1].double().numpy()
    return out.logits.double().numpy()


def _torch_form(form):
    p, q = form.p, form.q

    def g(x: torch.Tensor) -> torch.Tensor:
        z = x * torch.rsqrt(x * x + p)
        return z * sum(c * (z * z) ** i for i, c in enumerate(q))

    return g


class _GeluForm(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 2 * (1 + _torch_form(GELU_REF)(x))


def _with_form_gelu(model):
    """transformers' model with its FFN GeLU replaced by the reference set's form."""
    n = 0
    for mod in model.modules():
        if hasattr(mod, "intermediate_act_fn"):  # BertIntermediate, RobertaIntermediate
            mod.intermediate_act_fn = _GeluForm()
            n += 1
        elif type(mod).__name__ == "FFN":  # DistilBERT
            mod.activation = _GeluForm()
            n += 1
    assert n == LAYERS, f"replaced {n} FFN activations, expected {LAYERS}"
    return model


def _head(model, family: str, h: torch.Tensor, relu_mu: float) -> np.ndarray:
    """transformers' head modules on the hidden states `h`, with the pooler activation
    the program uses (the tanh form; DistilBERT's ReLU as SMU(0, μ))."""
    tanh = _torch_form(TANH_REF)
    x = h[:, 0]
    with torch.no_grad():
        if family == "bert":
            y = model.classifier(tanh(model.bert.pooler.dense(x)))
        elif family == "roberta":
            y = model.classifier.out_proj(tanh(model.classifier.dense(x)))
        else:
            z = model.pre_classifier(x)
            y = model.classifier((z + torch.sqrt(z * z + relu_mu**2)) / 2)
    return y.numpy()


def _compile(family: str, classifier: bool, path: Path, approx: str = "reference"):
    random_checkpoint(family, classifier, path, layers=LAYERS)
    model, cfg = load_hf(path)
    rng = np.random.default_rng(0)
    compiled = compile_loaded(
        model, cfg, approx_for(path, approx), random_inputs(family, rng, 4), "t"
    )
    return model, compiled, random_inputs(family, rng, 1)[0]


def _exact_forward(compiled: CompiledModel, inp: ClientInput) -> np.ndarray:
    with torch.no_grad():
        out = encoder_forward(
            PlainBackend(None),
            compiled.card,
            0,
            inp.token_ids.shape,
            inp.attention_mask,
            compiled.weights,
            inp,
            sites=ExactSites(compiled.card),
        )
    return out


def _kept(x: np.ndarray, inp: ClientInput, hidden: bool) -> np.ndarray:
    # Padded positions differ by design (RoBERTa numbers them from padding_idx; they
    # are masked out of every attention row): compare real tokens only.
    return x[inp.attention_mask.astype(bool)] if hidden else x


def _col_norm(compiled: CompiledModel, name: str) -> float:
    """Largest column 1-norm of a linear weight: its ∞→∞ gain."""
    assert compiled.weights is not None
    return float(np.abs(compiled.weights[name + ".w"]).sum(axis=0).max())


def _approx_tol(compiled: CompiledModel, classifier: bool) -> float:
    """The approximation's error allowance at the output (float emulation vs the
    checkpoint's own forward — for the Comet set, its patched forward), from public
    constants. Body: per layer, the reference GeLU form's max_abs_err (the LayerNorm
    after the FFN keeps that scale) plus 4 rsqrt errors (the two LayerNorms, GeLU/SMU,
    the softmax's final reciprocal), each bounded by its plan's max_rel_err. Head: the
    body's error through the pooler's linear layer and 1-Lipschitz activation, plus the
    activation's form error (tanh form: TANH_REF.max_abs_err; DistilBERT's ReLU as
    SMU(0, μ): μ/2; the Comet set's algebraic tanh is exact up to its rsqrt), times the
    classifier's gain."""
    card = compiled.card
    plans = [p.max_rel_err for p in card.sites.rsqrt.values()]
    plans += [s.plan.max_rel_err for s in card.sites.layernorm.values()]
    plans += [s.final_plan.max_rel_err for s in card.sites.softmax.values()]
    form = GELU_REF.max_abs_err if card.approx.kind == "reference" else 0.0
    body = card.arch.layers * (form + 4 * max(plans))
    if not classifier:
        return body
    if card.arch.pooler_act == "relu":
        act = card.approx.relu_form_mu / 2
    else:
        act = TANH_REF.max_abs_err if card.approx.kind == "reference" else max(plans)
    return _col_norm(compiled, "cls") * (act + _col_norm(compiled, "pool") * body)


def _fixed_tol(compiled: CompiledModel, classifier: bool) -> float:
    """`FIXED_TOL` at the output: through the head's two linear layers' gains."""
    if not classifier:
        return FIXED_TOL
    return FIXED_TOL * _col_norm(compiled, "cls") * max(1.0, _col_norm(compiled, "pool"))


@pytest.mark.parametrize("family,classifier", CASES)
def test_random_checkpoint_sets_every_neutral_parameter(family, classifier, tmp_path) -> None:
    random_checkpoint(family, classifier, tmp_path, layers=LAYERS)
    model, _ = load_hf(tmp_path)
    params = neutral_parameters(model)
    assert any("token_type" in n for n in params) == (family != "distilbert")
    for name, p in params.items():
        assert float(p.abs().min()) >= 0.05, name


@pytest.mark.parametrize("family,classifier", CASES)
def test_import_is_exact(family: str, classifier: bool, tmp_path) -> None:
    model, compiled, inp = _compile(family, classifier, tmp_path)
    hf = _with_form_gelu(model.double())
    want_h = _hf_forward(hf, inp, hidden=True)
    got = _exact_forward(replace(compiled, card=_hidden_card(compiled)), inp)
    err = np.abs(_kept(got, inp, True) - _kept(want_h, inp, True)).max()
    assert err <= EXACT_TOL * max(1.0, np.abs(want_h).max())
    if classifier:
        want = _head(hf, family, torch.tensor(want_h), compiled.card.approx.relu_form_mu)
        got = _exact_forward(compiled, inp)
        assert np.abs(got - want).max() <= EXACT_TOL * max(1.0, np.abs(want).max())


def _hidden_card(compiled: CompiledModel):
    from common.protocol.session import card_for_output

    return card_for_output(compiled.card, "hidden")


@pytest.mark.parametrize("family,classifier", CASES)
def test_emulations_and_private_run_match_transformers(family, classifier, tmp_path) -> None:
    model, compiled, inp = _compile(family, classifier, tmp_path)
    hidden = not classifier
    want = _kept(_hf_forward(model.double(), inp, hidden), inp, hidden)
    tol = _approx_tol(compiled, classifier)
    assert np.abs(_kept(plain_forward(compiled, inp), inp, hidden) - want).max() <= tol
    tol += _fixed_tol(compiled, classifier)
    got_fixed = _kept(plain_forward(compiled, inp, FRAC_BITS), inp, hidden)
    assert np.abs(got_fixed - want).max() <= tol
    _, client = local_private_forward(compiled, inp, provider="insecure_dealer")
    assert np.abs(_kept(client.output, inp, hidden) - want).max() <= tol


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_comet_set_matches_patched_transformers(family: str, tmp_path) -> None:
    from comet_server.adapt.patch import COMET_JSON, CometParams, SoftmaxConstants, comet_form

    random_checkpoint(family, True, tmp_path, layers=LAYERS)
    params = CometParams(0.1, 0.7, SoftmaxConstants(0.5, 1.0))
    (tmp_path / COMET_JSON).write_text(json.dumps(params.to_json()))
    model, cfg = load_hf(tmp_path)
    with torch.no_grad():  # attention logits of order 1: ReLU-softmax is not degenerate
        for n, p in model.named_parameters():
            if "query.weight" in n:
                p.mul_(8)
    rng = np.random.default_rng(0)
    compiled = compile_loaded(model, cfg, approx_for(tmp_path), random_inputs(family, rng, 4), "t")
    assert compiled.card.approx.kind == "comet"
    inp = random_inputs(family, rng, 1)[0]
    want = _hf_forward(comet_form(model.double(), params), inp, hidden=False)
    got = _exact_forward(compiled, inp)
    assert np.abs(got - want).max() <= EXACT_TOL * max(1.0, np.abs(want).max())
    tol = _approx_tol(compiled, True)
    assert np.abs(plain_forward(compiled, inp) - want).max() <= tol
    tol += _fixed_tol(compiled, True)
    _, client = local_private_forward(compiled, inp, provider="insecure_dealer")
    assert np.abs(client.output - want).max() <= tol
