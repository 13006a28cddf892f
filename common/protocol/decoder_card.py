"""The public card of a causal language model (Llama / GPT-2 family).

Like `ModelCard` for encoders: the architecture, the approximation constants and the
calibrated per-site plans are public; the weights stay with the server
(`CompiledDecoder.weights`). A separate type so that the encoder card (and the digest
of every cached encoder) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from common.approx.functions import OddFormParams
from common.protocol.card import Sites, _jsonable, sites_from_dict

DECODER_FAMILIES = ("llama", "gpt2")


@dataclass(frozen=True)
class DecoderArch:
    """Shapes of a pre-norm causal LM (public).

    llama: RMSNorm, RoPE (rope_theta), grouped-query attention (kv_heads ≤ heads),
    SwiGLU FFN (gate, up, down; SiLU), no biases. gpt2: LayerNorm, learned positions,
    GeLU FFN, biases. Both: the LM head is a linear layer with the server's weights
    (tied to the embedding when the checkpoint ties them). `max_context` is the
    longest prompt + generation this card serves (its softmax sites are fitted to it).
    """

    family: str
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    max_context: int
    norm_eps: float
    rope_theta: float = 0.0  # llama only
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in DECODER_FAMILIES:
            raise ValueError(f"unsupported decoder family {self.family!r}: {DECODER_FAMILIES}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError("hidden must be a multiple of heads, heads of kv_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads


@dataclass(frozen=True)
class DecoderApprox:
    """The reference approximation set for unmodified decoders: the FFN activation as
    an odd rsqrt form x/2·(1 + z·q(z²)) (SiLU for llama, GeLU for gpt2) and the
    exp-based softmax with calibrated bounds (no LUT, no comparison)."""

    kind: str  # "reference"
    act_form: OddFormParams


@dataclass
class DecoderCard:
    """The public description both parties run the decoder program from."""

    name: str
    arch: DecoderArch
    approx: DecoderApprox
    sites: Sites = field(default_factory=Sites)

    def to_json(self) -> str:
        return json.dumps({"kind": "decoder", **_jsonable(self)}, sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, text: str) -> DecoderCard:
        d = json.loads(text)
        if d.get("kind") != "decoder":
            raise ValueError("not a decoder card")
        arch = dict(d["arch"])
        arch["eos_token_ids"] = tuple(arch["eos_token_ids"])
        a = d["approx"]
        approx = DecoderApprox(
            a["kind"], OddFormParams(float(a["act_form"]["p"]), tuple(a["act_form"]["q"]))
        )
        return cls(d["name"], DecoderArch(**arch), approx, sites_from_dict(d["sites"]))


@dataclass
class CompiledDecoder:
    """A decoder card plus, on the server, the weights (canonical names, float64)."""

    card: DecoderCard
    weights: dict[str, NDArray[np.float64]] | None = None

    def without_weights(self) -> CompiledDecoder:
        return CompiledDecoder(self.card, None)
