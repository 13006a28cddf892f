"""The models a server serves: compiled (weights + public card) once at start-up.

Encoders (BERT family) are compiled at every start (seconds). Causal LMs (Llama /
GPT-2 family: `model_type` llama or gpt2) take minutes to calibrate, so their public
card is cached under `<cache>/cards/` (`<cache>` as for the default model), keyed by
the checkpoint's files and the compiler's source; the weights are read from the
checkpoint again at every start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.mpc.ring import PublicMatrices
from common.protocol.calibrate import compile_model
from common.protocol.card import CompiledModel
from common.protocol.decoder_card import CompiledDecoder, DecoderCard
from common.protocol.run import PlanCache

log = logging.getLogger("comet.server")

# Files a client needs to tokenize locally (all public).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
DECODER_TYPES = ("llama", "gpt2")
# The sources a decoder card depends on: a change invalidates cached cards.
_COMPILER_SOURCES = (
    "common/protocol/decoder_hf.py",
    "common/protocol/decoder.py",
    "common/protocol/decoder_card.py",
    "common/protocol/calibrate.py",
    "common/protocol/calibration_texts.py",
    "common/approx/functions.py",
    "common/approx/forms.py",
    "common/approx/rsqrt_fit.py",
)


@dataclass
class ServedModel:
    name: str
    path: Path
    compiled: CompiledModel | CompiledDecoder
    tokenizer_files: dict[str, bytes]
    # The weights encoded for the protocol, once for all sessions.
    matrices: PublicMatrices = field(default_factory=PublicMatrices)
    # Its plans per (output, shape): planned once, not per session.
    plans: PlanCache = field(default_factory=PlanCache)

    @property
    def card_json(self) -> str:
        return self.compiled.card.to_json()

    @property
    def is_decoder(self) -> bool:
        """A causal LM (served by generation sessions only)."""
        return isinstance(self.compiled, CompiledDecoder)


def resolve(spec: str) -> tuple[str, Path]:
    """`default` / `original` (the bundled encoders), `smollm2` (the bundled decoder) —
    each built on first use and cached —, `NAME=DIR` or DIR."""
    if spec in ("default", "original"):
        from comet_server.adapt.default import default_model_dir, original_model_dir

        return spec, (default_model_dir if spec == "default" else original_model_dir)(build=True)
    if spec == "smollm2":
        from comet_server.adapt.smollm2 import smollm2_model_dir

        return spec, smollm2_model_dir(build=True)
    name, _, path = spec.rpartition("=")
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"model {spec!r}: not 'default', 'original', 'smollm2' or a checkpoint directory "
            "(no config.json)"
        )
    return name or p.name, p


def is_decoder_dir(path: Path) -> bool:
    """Whether the checkpoint at `path` is a causal LM of a supported family."""
    config = json.loads((Path(path) / "config.json").read_text())
    return config.get("model_type") in DECODER_TYPES


def _card_key(path: Path, name: str) -> str:
    """Digest of what a decoder card is computed from: the checkpoint's files (config,
    tokenizer, weights by size and mtime), the name and the compiler's source."""
    h = hashlib.sha256(name.encode())
    for f in sorted(path.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    root = Path(__file__).resolve().parents[1]
    for src in _COMPILER_SOURCES:
        h.update((root / src).read_bytes())
    return h.hexdigest()[:20]


def compile_decoder_cached(path: Path, name: str) -> tuple[CompiledDecoder, Any]:
    """The compiled decoder at `path`: its card from the cache when the key matches,
    else calibrated (minutes) and cached; the weights always from the checkpoint."""
    from comet_server.adapt.default import cache_root
    from common.protocol.decoder_hf import compile_decoder_dir, decoder_weights, load_causal_lm

    cached = cache_root() / "cards" / f"{name}-{_card_key(path, name)}.json"
    if cached.is_file():
        card = DecoderCard.from_json(cached.read_text())
        model, _, tok = load_causal_lm(path)
        log.info("decoder %s: card from the cache (%s)", name, cached)
        return CompiledDecoder(card, decoder_weights(model, card.arch)), tok
    log.info("calibrating decoder %s (minutes; the card is cached for next time)", name)
    compiled, tok = compile_decoder_dir(path, name=name)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(compiled.card.to_json())
    tmp.replace(cached)
    return compiled, tok


def load_models(specs: list[str], approx: str = "auto") -> dict[str, ServedModel]:
    """Compile every model; the first one is the default a client gets without asking."""
    out: dict[str, ServedModel] = {}
    for spec in specs:
        name, path = resolve(spec)
        if name in out:
            raise ValueError(f"two models are named {name!r}; use NAME=DIR to tell them apart")
        compiled: CompiledModel | CompiledDecoder
        if is_decoder_dir(path):
            if approx == "comet":
                raise ValueError(
                    f"model {name!r} is a decoder: it runs the reference set only "
                    "(--approx auto or reference)"
                )
            log.info("compiling decoder %s from %s (reference set)", name, path)
            compiled, _ = compile_decoder_cached(path, name)
        else:
            log.info("compiling %s from %s (approximations: %s)", name, path, approx)
            compiled, _ = compile_model(path, approx=approx, name=name)
        files = {f: (path / f).read_bytes() for f in TOKENIZER_FILES if (path / f).is_file()}
        if not files:
            raise FileNotFoundError(f"model {name!r}: no tokenizer files in {path}")
        out[name] = ServedModel(name, path, compiled, files)
        log.info("model %s ready: card %s", name, compiled.card.digest())
    return out
