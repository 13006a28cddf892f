"""The public model card: everything both parties know about a compiled model.

Architecture and hyper-parameters, the approximation set with its public constants,
and the per-site calibrated ranges and plans (§2 of the design brief lists these as
public). Weights are not here: they stay with the server (`CompiledModel.weights`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from common.approx.functions import ExpSoftmaxSite, LayerNormSite, OddFormParams, SmuParams
from common.approx.rsqrt_fit import RsqrtPlan

FAMILIES = ("bert", "roberta", "distilbert")
APPROX_SETS = ("comet", "reference")


@dataclass(frozen=True)
class Architecture:
    """Shapes of a post-LayerNorm BERT-family encoder (public)."""

    family: str
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    max_positions: int
    type_vocab: int  # 0: no token-type embeddings
    position_offset: int  # RoBERTa numbers positions from padding_idx + 1
    ln_eps: float
    head: str  # "classifier" or "none" (bare encoder)
    pooler_act: str  # "tanh" (BERT pooler, RoBERTa head), "relu" (DistilBERT), "none"
    num_labels: int = 0
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unsupported family {self.family!r}; supported: {FAMILIES}")
        if self.hidden % self.heads:
            raise ValueError("hidden size must be a multiple of the number of heads")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class ApproxConfig:
    """Which approximation set, and its per-model public constants."""

    kind: str  # "comet" | "reference"
    smu: SmuParams | None = None  # comet: GeLU → SMU
    relu_mu: float = 0.5  # comet: ReLU-softmax
    relu_eps: float = 1.0
    gelu_form: OddFormParams | None = None  # reference: GeLU
    tanh_form: OddFormParams | None = None  # reference: pooler tanh
    relu_form_mu: float = 0.05  # both: pooler ReLU (DistilBERT) as SMU with small μ
    exp_k: int = 2  # reference softmax: exponent split K = 2^k

    def __post_init__(self) -> None:
        if self.kind not in APPROX_SETS:
            raise ValueError(f"unknown approximation set {self.kind!r}; use {APPROX_SETS}")


@dataclass(frozen=True)
class OutputBounds:
    """Public bounds of a correct output (calibrated, widened; `common.protocol.outcheck`).

    `hidden`: every coordinate of a real token's last hidden state; `hidden_norm`: that
    state's Euclidean norm; `logits`: every logit (classifiers only, else None).
    """

    hidden: tuple[float, float]
    hidden_norm: tuple[float, float]
    logits: tuple[float, float] | None = None

    @classmethod
    def from_dict(cls, d: dict) -> OutputBounds:
        def pair(v: list | None) -> tuple[float, float] | None:
            return None if v is None else (float(v[0]), float(v[1]))

        hidden, norm = pair(d["hidden"]), pair(d["hidden_norm"])
        assert hidden is not None and norm is not None
        return cls(hidden, norm, pair(d.get("logits")))


@dataclass
class Sites:
    """Per-site public constants, filled by calibration (`common.protocol.calibrate`)."""

    rsqrt: dict[str, RsqrtPlan] = field(default_factory=dict)
    layernorm: dict[str, LayerNormSite] = field(default_factory=dict)
    softmax: dict[str, ExpSoftmaxSite] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # observed, raw
    # None in cards compiled before output bounds existed: the output is then unchecked
    output: OutputBounds | None = None


@dataclass
class ModelCard:
    """The public description both parties run the program from."""

    name: str
    arch: Architecture
    approx: ApproxConfig
    sites: Sites
    public_embeddings: bool = False
    # With public embeddings: the public checkpoint the word table equals, and its
    # digest (`common.protocol.public_tables`); the client checks its own copy.
    embedding_source: str = ""
    embedding_digest: str = ""
    # A public bound on the linear weights: |w| ≤ 2^weight_log2 (None: the generic bound
    # of `HeProvider`, |w·2^f| < 2^28). Sizes the CRT basis of the linear masks
    # (`linear_weight_bits`); it reveals the largest weight's binary exponent.
    weight_log2: int | None = None

    def to_json(self) -> str:
        return json.dumps(_jsonable(self), sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        d = json.loads(text)
        arch = d["arch"]
        arch["labels"] = tuple(arch["labels"])
        a = d["approx"]
        approx = ApproxConfig(
            kind=a["kind"],
            smu=SmuParams(**a["smu"]) if a["smu"] else None,
            relu_mu=a["relu_mu"],
            relu_eps=a["relu_eps"],
            gelu_form=_form(a["gelu_form"]),
            tanh_form=_form(a["tanh_form"]),
            relu_form_mu=a["relu_form_mu"],
            exp_k=a["exp_k"],
        )
        sites = sites_from_dict(d["sites"])
        return cls(
            d["name"],
            Architecture(**arch),
            approx,
            sites,
            d["public_embeddings"],
            d.get("embedding_source", ""),
            d.get("embedding_digest", ""),
            d.get("weight_log2"),
        )


def sites_from_dict(s: dict) -> Sites:
    """`Sites` from its JSON form (shared by the encoder and decoder cards)."""
    return Sites(
        rsqrt={k: RsqrtPlan.from_dict(v) for k, v in s["rsqrt"].items()},
        layernorm={
            k: LayerNormSite(v["scale"], v["eps"], RsqrtPlan.from_dict(v["plan"]))
            for k, v in s["layernorm"].items()
        },
        softmax={
            k: ExpSoftmaxSite(
                v["bound"],
                v["k"],
                v["m"],
                v["pre_scale"],
                v["target"],
                RsqrtPlan.from_dict(v["first_plan"]),
                RsqrtPlan.from_dict(v["stage_plan"]),
                RsqrtPlan.from_dict(v["final_plan"]),
            )
            for k, v in s["softmax"].items()
        },
        ranges={k: (float(v[0]), float(v[1])) for k, v in s["ranges"].items()},
        output=OutputBounds.from_dict(s["output"]) if s.get("output") else None,
    )


def _form(d: dict | None) -> OddFormParams | None:
    return None if d is None else OddFormParams(float(d["p"]), tuple(d["q"]))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, RsqrtPlan):
        return obj.to_dict()
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


@dataclass
class CompiledModel:
    """A card plus, on the server, the weights (canonical names, float64, (in, out))."""

    card: ModelCard
    weights: dict[str, NDArray[np.float64]] | None = None

    def without_weights(self) -> CompiledModel:
        return CompiledModel(self.card, None)


def weight_log2_of(weights: Mapping[str, NDArray]) -> int:
    """The card's `weight_log2` for these weights: the smallest e with |w| ≤ 2^e for
    every matrix (2-D array: the linear weights and the tables), at least −8."""
    mats = [w for w in weights.values() if np.ndim(w) == 2 and np.size(w)]
    top = max((float(np.abs(w).max()) for w in mats), default=0.0)
    return max(-8, math.ceil(math.log2(top))) if top > 0 else -8


def linear_weight_bits(card: ModelCard, frac_bits: int) -> int | None:
    """The bound 2^bits on the encoded linear weights |round(w·2^f)| that a card
    implies (None: no bound on the card). |w| ≤ 2^e gives |w·2^f| + 1/2 < 2^(e+f+1)."""
    if card.weight_log2 is None:
        return None
    return max(1, card.weight_log2 + frac_bits + 1)


__all__ = [
    "ApproxConfig",
    "Architecture",
    "CompiledModel",
    "ModelCard",
    "OutputBounds",
    "Sites",
    "asdict",
    "linear_weight_bits",
    "weight_log2_of",
]
