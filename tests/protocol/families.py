"""Random checkpoints of every supported family, with nothing left at its neutral value.

A freshly initialised transformers model has zero biases, unit LayerNorm gains, zero
LayerNorm biases and small embeddings, so an import that drops one of them (RoBERTa's
token-type row, a bias, a norm) can still match transformers' forward closely. Here
every embedding (all rows, all tables), bias and norm parameter is set to values far
from zero, so every one of them moves the output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.protocol.program import ClientInput

FAMILIES = ("bert", "roberta", "distilbert")
VOCAB = 120
PAD = {"bert": 0, "roberta": 1, "distilbert": 0}
# Parameters that a fresh init leaves at 0, 1 or near 0, by name.
_NEUTRAL = ("embeddings", "bias", "LayerNorm", "layer_norm")


def random_checkpoint(
    family: str, classifier: bool, path: Path, seed: int = 0, layers: int = 2
) -> Path:
    """Save a random `family` encoder (with a 3-label head if `classifier`) at `path`.

    Shapes are small (hidden 32, 4 heads, FFN 64); RoBERTa gets roberta-base's single
    token-type row, BERT two rows. Returns `path` (a checkpoint `load_hf` reads).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers as tf

    torch.manual_seed(seed)
    names = {0: "a", 1: "b", 2: "c"}
    labels: dict[str, Any] = {}
    if classifier:
        labels = {"num_labels": 3, "id2label": names, "label2id": {v: k for k, v in names.items()}}
    common: dict[str, Any] = dict(
        vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=PAD[family], **labels
    )
    if family == "distilbert":
        cfg = tf.DistilBertConfig(dim=32, n_layers=layers, n_heads=4, hidden_dim=64, **common)
        cls = tf.DistilBertForSequenceClassification if classifier else tf.DistilBertModel
    else:
        Config = tf.BertConfig if family == "bert" else tf.RobertaConfig
        cfg = Config(
            hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=64, type_vocab_size=2 if family == "bert" else 1, **common,
        )  # fmt: skip
        if family == "bert":
            cls = tf.BertForSequenceClassification if classifier else tf.BertModel
        else:
            cls = tf.RobertaForSequenceClassification if classifier else tf.RobertaModel
    model = cls(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not any(k in name for k in _NEUTRAL):
                continue
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:
                # gains in ±[0.5, 1.5]: some negative, none near 0
                sign = torch.where(torch.rand(p.shape, generator=gen) < 0.2, -1.0, 1.0)
                p.copy_(sign * (0.5 + torch.rand(p.shape, generator=gen)))
            else:
                # biases and embedding entries: |v| in [0.05, 0.55]
                mag = 0.05 + 0.5 * torch.rand(p.shape, generator=gen)
                p.copy_(torch.where(torch.rand(p.shape, generator=gen) < 0.5, -mag, mag))
        if classifier:  # spread the logits (random init gives near-constant ones)
            for name, p in model.named_parameters():
                if name.startswith(("classifier", "pre_classifier")) and "weight" in name:
                    p.mul_(10)
    model.save_pretrained(path)
    return Path(path)


def neutral_parameters(model: Any) -> dict[str, torch.Tensor]:
    """The embedding, bias and norm parameters of `model` (what `random_checkpoint` sets)."""
    return {n: p for n, p in model.named_parameters() if any(k in n for k in _NEUTRAL)}


def random_inputs(family: str, rng: np.random.Generator, n: int = 2, length: int = 10):
    """`n` batches of 2 texts, the second padded (with the family's pad id) by 3 tokens."""
    out = []
    for _ in range(n):
        ids = rng.integers(3, VOCAB, (2, length))
        mask = np.ones((2, length), dtype=np.int64)
        mask[1, length - 3 :] = 0
        ids[mask == 0] = PAD[family]
        out.append(ClientInput(ids.astype(np.int64), mask))
    return out
