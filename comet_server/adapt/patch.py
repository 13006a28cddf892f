"""The exact Comet functions inside a transformers BERT/RoBERTa model.

`comet_form(model, params)` swaps, in place:
- every FFN activation (GeLU) for SMU with one (α, μ) pair shared by the whole model;
- attention softmax for ReLU-softmax (an attention function registered with
  transformers as ``comet_relu``; keys masked by the padding mask get weight 0);
- the pooler's tanh (BERT's pooler, RoBERTa's classification head) for the algebraic
  tanh x/√(1+x²).
The swapped model computes what the two-party protocol computes with the Comet set,
with exact square roots (the protocol's rsqrt error is ≤ 2^-12 relative over the
calibrated ranges), so it is what `comet-adapt` trains and what accuracy is measured
against. (α, μ) live in a `CometParams` module outside the model's module tree, so the
model's state dict — and the saved checkpoint — stays a standard one; `comet.json`
beside the checkpoint holds the Comet constants.
"""

from __future__ import annotations

import json
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.approx.exact import algebraic_tanh, relu_softmax, smu

ATTN_NAME = "comet_relu"
COMET_JSON = "comet.json"
FORMAT_VERSION = 1


@dataclass
class SoftmaxConstants:
    """ReLU-softmax constants: r = smu(s; 0, mu) on kept keys, r / (Σ r + eps)."""

    mu: float = 0.5
    eps: float = 1.0


class CometParams(nn.Module):
    """The trainable SMU constants (shared by every FFN) and the fixed softmax ones.

    `taps`, when a list, collects every rsqrt site's input during a forward pass —
    (SMU input, None) per FFN and (attention scores, keep mask) per attention — for
    training's range penalty (`train.range_penalty`); None (the default) records nothing.
    """

    def __init__(
        self, alpha: float = 0.0, mu: float = 1.0, softmax: SoftmaxConstants | None = None
    ) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.mu = nn.Parameter(torch.tensor(float(mu)))
        self.softmax = softmax or SoftmaxConstants()
        self.taps: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "gelu": {"alpha": float(self.alpha.detach()), "mu": abs(float(self.mu.detach()))},
            "softmax": {"mu": self.softmax.mu, "eps": self.softmax.eps},
            "pooler": "algebraic_tanh",
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> CometParams:
        if meta.get("format", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(f"unsupported comet.json format {meta.get('format')!r}")
        sm = SoftmaxConstants(float(meta["softmax"]["mu"]), float(meta["softmax"]["eps"]))
        return cls(float(meta["gelu"]["alpha"]), float(meta["gelu"]["mu"]), sm)


class _Smu(nn.Module):
    def __init__(self, params: CometParams) -> None:
        super().__init__()
        object.__setattr__(self, "_p", params)  # not a submodule: keeps state_dict standard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p: CometParams = self._p  # type: ignore[assignment]
        if p.taps is not None:
            p.taps.append((x, None))
        return smu(x, p.alpha, p.mu)


class _AlgebraicTanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return algebraic_tanh(x)


def _roberta_head_forward(self: nn.Module, features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """RobertaClassificationHead.forward with the algebraic tanh in place of tanh."""
    x = self.dropout(features[:, 0, :])
    x = algebraic_tanh(self.dense(x))
    return self.out_proj(self.dropout(x))


def _keep_from_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return mask.to(torch.float32)
    # Additive float mask: 0 where attended, a very negative number where masked.
    return (mask > torch.finfo(mask.dtype).min / 2).to(mask.dtype)


def _relu_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    params: CometParams | None = getattr(module, "_comet_params", None)
    sm = params.softmax if params is not None else SoftmaxConstants()
    keep = _keep_from_mask(attention_mask)
    if params is not None and params.taps is not None:
        params.taps.append((scores, keep))
    weights = relu_softmax(scores, keep, sm.mu, sm.eps)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, _relu_attention)
    try:  # the mask the attention function receives: same as eager's (additive float)
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, eager_mask)
    except ImportError:  # pragma: no cover - older transformers: _keep_from_mask copes
        pass


SUPPORTED = ("bert", "roberta")


def comet_form(model: nn.Module, params: CometParams) -> nn.Module:
    """Patch `model` (BERT or RoBERTa family) in place into its Comet form; returns it."""
    kind = getattr(model.config, "model_type", "")
    if kind not in SUPPORTED:
        raise ValueError(
            f"comet-adapt supports {', '.join(SUPPORTED)} models; this one is {kind!r}"
        )
    _register()
    n_ffn = 0
    for mod in model.modules():
        if hasattr(mod, "intermediate_act_fn"):
            mod.intermediate_act_fn = _Smu(params)
            n_ffn += 1
        if type(mod).__name__.endswith("SelfAttention"):
            object.__setattr__(mod, "_comet_params", params)
        if type(mod).__name__.endswith("Pooler") and hasattr(mod, "activation"):
            mod.activation = _AlgebraicTanh()
        if type(mod).__name__ == "RobertaClassificationHead":
            # its forward calls torch.tanh directly (no activation attribute to swap)
            mod.forward = types.MethodType(_roberta_head_forward, mod)
    if n_ffn == 0:
        raise ValueError("no FFN activation found to replace")
    model.config._attn_implementation = ATTN_NAME
    # Cache the Comet constants on the model so callers can find them.
    object.__setattr__(model, "comet_params", params)
    return model


def save_comet_model(model: nn.Module, tokenizer: Any, params: CometParams, out: Path) -> None:
    """Write a standard checkpoint (config without the patch) plus comet.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        model.save_pretrained(out)
    finally:
        model.config._attn_implementation = impl
    tokenizer.save_pretrained(out)
    (out / COMET_JSON).write_text(json.dumps(params.to_json(), indent=2) + "\n")


def load_comet_model(model_dir: str | Path) -> tuple[nn.Module, Any, CometParams]:
    """Load a Comet-form checkpoint as a patched transformers model (eval mode).

    Returns (model, tokenizer, params). Never touches the network.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from common.protocol.hf import load_hf

    path = Path(model_dir)
    meta_path = path / COMET_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a Comet-form model (no {COMET_JSON})")
    params = CometParams.from_json(json.loads(meta_path.read_text()))
    model, _ = load_hf(path)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return comet_form(model, params).eval(), tok, params
