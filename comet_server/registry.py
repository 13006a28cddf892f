"""The models a server serves: compiled (weights + public card) once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from common.protocol.calibrate import compile_model
from common.protocol.card import CompiledModel

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
)


@dataclass
class ServedModel:
    name: str
    path: Path
    compiled: CompiledModel
    tokenizer_files: dict[str, bytes]

    @property
    def card_json(self) -> str:
        return self.compiled.card.to_json()


def resolve(spec: str) -> tuple[str, Path]:
    """`default` / `original` (the bundled models, built on first use), `NAME=DIR` or DIR."""
    if spec in ("default", "original"):
        from comet_server.adapt.default import default_model_dir, original_model_dir

        return spec, (default_model_dir if spec == "default" else original_model_dir)(build=True)
    name, _, path = spec.rpartition("=")
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"model {spec!r}: not 'default', 'original' or a checkpoint directory (no config.json)"
        )
    return name or p.name, p


def load_models(specs: list[str], approx: str = "auto") -> dict[str, ServedModel]:
    """Compile every model; the first one is the default a client gets without asking."""
    out: dict[str, ServedModel] = {}
    for spec in specs:
        name, path = resolve(spec)
        if name in out:
            raise ValueError(f"two models are named {name!r}; use NAME=DIR to tell them apart")
        log.info("compiling %s from %s (approximations: %s)", name, path, approx)
        compiled, _ = compile_model(path, approx=approx, name=name)
        files = {f: (path / f).read_bytes() for f in TOKENIZER_FILES if (path / f).is_file()}
        if not files:
            raise FileNotFoundError(f"model {name!r}: no tokenizer files in {path}")
        out[name] = ServedModel(name, path, compiled, files)
        log.info("model %s ready: card %s", name, compiled.card.digest())
    return out
