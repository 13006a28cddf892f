"""Read a HuggingFace BERT / RoBERTa / DistilBERT checkpoint into canonical weights.

Canonical names (all float64, linear weights as (in, out)):
  emb.word (V, d), emb.pos (P, d), emb.type (T, d) if any (row 0 is always added, as
  transformers does for BERT and RoBERTa), emb.ln.{g,b};
  L{i}.{q,k,v,o,ff1,ff2}.{w,b}, L{i}.ln1.{g,b} (after attention), L{i}.ln2.{g,b};
  pool.{w,b} (BERT pooler / RoBERTa head dense / DistilBERT pre_classifier), cls.{w,b}.
The attention scale 1/√d_head is folded into L{i}.q (free for the server).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from common.protocol.card import Architecture

Weights = dict[str, NDArray[np.float64]]


class UnsupportedModel(ValueError):
    """The checkpoint is not a supported BERT-family encoder."""


def load_hf(model_dir: str | Path) -> tuple[Any, Any]:
    """Load (model, config) from a local directory; never touches the network.

    A sequence-classification checkpoint loads with its head; anything else as a bare
    encoder.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    archs = config.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    else:
        model = AutoModel.from_pretrained(path, local_files_only=True)
    return model.eval(), config


def architecture_of(model: Any, config: Any) -> Architecture:
    """Public architecture card of a loaded model."""
    family = config.model_type
    if family not in ("bert", "roberta", "distilbert"):
        raise UnsupportedModel(f"model type {family!r} is not supported")
    classifier = type(model).__name__.endswith("ForSequenceClassification")
    if family == "distilbert":
        hidden, layers, heads, ffn = config.dim, config.n_layers, config.n_heads, config.hidden_dim
        act = config.activation
        eps, type_vocab, offset = 1e-12, 0, 0
        pooler_act = "relu" if classifier else "none"
    else:
        hidden, layers = config.hidden_size, config.num_hidden_layers
        heads, ffn = config.num_attention_heads, config.intermediate_size
        act = config.hidden_act
        eps = config.layer_norm_eps
        # RoBERTa has token-type embeddings too (roberta-base: one trained row) and
        # transformers always adds row 0 of them, as for BERT: the program must as well.
        type_vocab = config.type_vocab_size
        offset = (config.pad_token_id + 1) if family == "roberta" else 0
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise UnsupportedModel(
                f"position embeddings {config.position_embedding_type!r} are not supported "
                "(absolute only)"
            )
        if getattr(config, "is_decoder", False):
            raise UnsupportedModel("decoder (causal) configurations are not supported")
        pooler_act = "tanh" if classifier else "none"
    if act not in ("gelu", "gelu_new", "gelu_python"):
        raise UnsupportedModel(f"activation {act!r} is not supported (GeLU only)")
    labels: tuple[str, ...] = ()
    num_labels = 0
    if classifier:
        num_labels = config.num_labels
        labels = tuple(str(config.id2label[i]) for i in range(num_labels))
    return Architecture(
        family=family,
        vocab_size=config.vocab_size,
        hidden=hidden,
        layers=layers,
        heads=heads,
        ffn=ffn,
        max_positions=config.max_position_embeddings,
        type_vocab=type_vocab,
        position_offset=offset,
        ln_eps=float(eps),
        head="classifier" if classifier else "none",
        pooler_act=pooler_act,
        num_labels=num_labels,
        labels=labels,
    )


def canonical_weights(model: Any, arch: Architecture) -> Weights:
    """State dict → canonical names (see module docstring)."""
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    fam = arch.family
    prefix = ""
    for cand in ("bert.", "roberta.", "distilbert."):
        if any(k.startswith(cand) for k in sd):
            prefix = cand
    g = lambda name: sd[prefix + name]  # noqa: E731
    out: Weights = {}

    def lin(dst: str, src: str, scale: float = 1.0) -> None:
        out[dst + ".w"] = g(src + ".weight").T.copy() * scale
        out[dst + ".b"] = g(src + ".bias").copy() * scale

    def norm(dst: str, src: str) -> None:
        out[dst + ".g"] = g(src + ".weight").copy()
        out[dst + ".b"] = g(src + ".bias").copy()

    out["emb.word"] = g("embeddings.word_embeddings.weight")
    out["emb.pos"] = g("embeddings.position_embeddings.weight")
    if arch.type_vocab:
        out["emb.type"] = g("embeddings.token_type_embeddings.weight")
    norm("emb.ln", "embeddings.LayerNorm")
    qscale = 1.0 / math.sqrt(arch.head_dim)
    for i in range(arch.layers):
        if fam == "distilbert":
            s = f"transformer.layer.{i}."
            lin(f"L{i}.q", s + "attention.q_lin", qscale)
            lin(f"L{i}.k", s + "attention.k_lin")
            lin(f"L{i}.v", s + "attention.v_lin")
            lin(f"L{i}.o", s + "attention.out_lin")
            norm(f"L{i}.ln1", s + "sa_layer_norm")
            lin(f"L{i}.ff1", s + "ffn.lin1")
            lin(f"L{i}.ff2", s + "ffn.lin2")
            norm(f"L{i}.ln2", s + "output_layer_norm")
        else:
            s = f"encoder.layer.{i}."
            lin(f"L{i}.q", s + "attention.self.query", qscale)
            lin(f"L{i}.k", s + "attention.self.key")
            lin(f"L{i}.v", s + "attention.self.value")
            lin(f"L{i}.o", s + "attention.output.dense")
            norm(f"L{i}.ln1", s + "attention.output.LayerNorm")
            lin(f"L{i}.ff1", s + "intermediate.dense")
            lin(f"L{i}.ff2", s + "output.dense")
            norm(f"L{i}.ln2", s + "output.LayerNorm")
    if arch.head == "classifier":
        top = {k: v for k, v in sd.items() if not k.startswith(prefix)} if prefix else sd
        if fam == "bert":
            lin("pool", "pooler.dense")
            out["cls.w"], out["cls.b"] = top["classifier.weight"].T.copy(), top["classifier.bias"]
        elif fam == "roberta":
            out["pool.w"], out["pool.b"] = (
                top["classifier.dense.weight"].T.copy(),
                top["classifier.dense.bias"],
            )
            out["cls.w"], out["cls.b"] = (
                top["classifier.out_proj.weight"].T.copy(),
                top["classifier.out_proj.bias"],
            )
        else:
            out["pool.w"], out["pool.b"] = (
                top["pre_classifier.weight"].T.copy(),
                top["pre_classifier.bias"],
            )
            out["cls.w"], out["cls.b"] = top["classifier.weight"].T.copy(), top["classifier.bias"]
    return out
