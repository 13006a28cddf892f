"""The server's public tokenizer files as a tokenizer, loaded without `transformers`.

A client that classifies or embeds needs only token ids, the pad id and the padding
side. Importing `transformers` for that costs ≈ 0.5 s (more on a loaded machine) of
every `comet-client` call — a sixth of a prepared (online-only) inference of the
default model. A `tokenizer.json` read by the `tokenizers` library (which
transformers' fast tokenizers wrap) gives the same ids in ≈ 10 ms: its normaliser,
pre-tokeniser, model and post-processor (the special tokens) are the whole encoding.
The generic `PreTrainedTokenizerFast` adds only the pad token and padding side from
`tokenizer_config.json` / `special_tokens_map.json`, read here the same way.
`tests/comet_client/test_tokenizer.py` compares the ids with transformers'.

Generation (`comet-client generate`) keeps transformers' tokenizer: it needs chat
templates and decoding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


class TokenizerFilesError(ValueError):
    """The tokenizer files cannot be used as a plain fast tokenizer."""


def _token(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class FastTokenizer:
    """Token ids from a `tokenizer.json` (the subset of the transformers tokenizer API
    the classify path uses: `encode`, `pad_token_id`, `padding_side`)."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        from tokenizers import Tokenizer

        if "tokenizer.json" not in files:
            raise TokenizerFilesError("no tokenizer.json")
        try:
            self._tok = Tokenizer.from_str(files["tokenizer.json"].decode())
            config: dict = {}
            for name in ("special_tokens_map.json", "tokenizer_config.json"):
                if name in files:
                    d = json.loads(files[name])
                    if not isinstance(d, dict):
                        raise TokenizerFilesError(f"{name} is not an object")
                    config.update(d)  # tokenizer_config.json wins, as in transformers
        except TokenizerFilesError:
            raise
        except Exception as e:  # tokenizers raises plain Exceptions on a bad file
            raise TokenizerFilesError(str(e)) from e
        # tokenizer.json may carry its own padding / truncation settings; transformers
        # overrides them on every call, and so does `encode`.
        self._tok.no_padding()
        self._tok.no_truncation()
        pad = _token(config.get("pad_token"))
        self.pad_token_id: int | None = self._tok.token_to_id(pad) if pad is not None else None
        side = config.get("padding_side", "right")
        if side not in ("left", "right"):
            raise TokenizerFilesError(f"padding_side {side!r}")
        self.padding_side: str = side

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Each text's ids with the model's special tokens, no padding; cut to
        `max_length` (special tokens kept) when it is given."""
        if max_length is not None:
            self._tok.enable_truncation(max_length)
        try:
            return [list(e.ids) for e in self._tok.encode_batch(list(texts))]
        finally:
            self._tok.no_truncation()


class TransformersTokenizer:
    """The same interface over a transformers tokenizer (no `tokenizer.json`)."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok
        self.pad_token_id: int | None = tok.pad_token_id
        self.padding_side: str = getattr(tok, "padding_side", "right")

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        if max_length is not None:
            enc = self._tok(list(texts), truncation=True, max_length=max_length)
        else:
            enc = self._tok(list(texts), truncation=False)
        return [list(map(int, r)) for r in enc["input_ids"]]


EncoderTokenizer = FastTokenizer | TransformersTokenizer


def encoder_tokenizer(files: Mapping[str, bytes]) -> EncoderTokenizer:
    """`FastTokenizer` when there is a `tokenizer.json`; else transformers' AutoTokenizer
    over the files (imports transformers: seconds)."""
    if "tokenizer.json" in files:
        return FastTokenizer(files)
    import tempfile
    from pathlib import Path

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="comet-tok-") as d:
        for name, data in files.items():
            (Path(d) / name).write_bytes(data)
        return TransformersTokenizer(AutoTokenizer.from_pretrained(d, local_files_only=True))
