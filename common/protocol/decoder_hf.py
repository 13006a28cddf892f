"""Compile a HuggingFace causal LM (LlamaForCausalLM, GPT2LMHeadModel) for private
generation: canonical weights, the public card, calibrated sites.

Canonical names (float64, linear weights as (in, out)):
  emb.word (V, d), emb.pos (P, d) [gpt2]; L{i}.ln1.{g[,b]}, L{i}.{q,k,v,o}.{w[,b]},
  L{i}.ln2.{g[,b]}; llama: L{i}.{gate,up,down}.w; gpt2: L{i}.{ff1,ff2}.{w,b};
  final.ln.{g[,b]}; lm.w (d, V) (the LM head; the embedding transposed when tied).
The attention scale 1/√d_head is folded into L{i}.q (RoPE is linear: it commutes).

Calibration runs prefill passes of the same program on the float back-end over sample
prompts, with every rsqrt replaced by a probe (as `common.protocol.calibrate` does for
encoders); the causal logits are observed on their unmasked entries only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.approx.backend import PlainBackend, Value
from common.approx.forms import GELU_REF, SILU_REF
from common.approx.functions import (
    ExpSoftmaxSite,
    LayerNormSite,
    OddFormParams,
    RsqrtProbe,
    SoftmaxProbe,
    exp_softmax_site,
)
from common.approx.rsqrt_fit import plan_rsqrt
from common.protocol.calibrate import MARGIN, REL_ERR
from common.protocol.card import Sites
from common.protocol.decoder import DecoderSites, Weights, decoder_forward
from common.protocol.decoder_card import CompiledDecoder, DecoderApprox, DecoderArch, DecoderCard
from common.protocol.hf import UnsupportedModel

DEFAULT_MAX_CONTEXT = 256


def decoder_arch_of(config: Any, max_context: int = DEFAULT_MAX_CONTEXT) -> DecoderArch:
    """Public architecture of a Llama- or GPT-2-family config."""
    fam = config.model_type
    eos = config.eos_token_id
    eos_ids = tuple(
        int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else [])
    )
    if fam == "llama":
        # transformers 5 keeps rope_theta inside rope_parameters (alias rope_scaling).
        rp = dict(
            getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        )
        if rp.get("rope_type", "default") != "default":
            raise UnsupportedModel(f"RoPE type {rp['rope_type']!r} is not supported")
        if config.hidden_act != "silu":
            raise UnsupportedModel(f"activation {config.hidden_act!r}: only SiLU (SwiGLU)")
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise UnsupportedModel("biased Llama projections are not supported")
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        if head_dim * config.num_attention_heads != config.hidden_size:
            raise UnsupportedModel("head_dim · heads must equal the hidden size")
        rope = rp.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
        return DecoderArch(
            family="llama",
            vocab_size=config.vocab_size,
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads,
            ffn=config.intermediate_size,
            max_context=min(max_context, config.max_position_embeddings),
            norm_eps=float(config.rms_norm_eps),
            rope_theta=float(rope),
            eos_token_ids=eos_ids,
        )
    if fam == "gpt2":
        if config.activation_function not in ("gelu_new", "gelu", "gelu_pytorch_tanh"):
            raise UnsupportedModel(f"activation {config.activation_function!r}: GeLU only")
        if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx:
            raise UnsupportedModel("only the standard 1/√d_head attention scale is supported")
        return DecoderArch(
            family="gpt2",
            vocab_size=config.vocab_size,
            hidden=config.n_embd,
            layers=config.n_layer,
            heads=config.n_head,
            kv_heads=config.n_head,
            ffn=config.n_inner or 4 * config.n_embd,
            max_context=min(max_context, config.n_positions),
            norm_eps=float(config.layer_norm_epsilon),
            eos_token_ids=eos_ids,
        )
    raise UnsupportedModel(f"model type {fam!r} is not a supported decoder (llama, gpt2)")


def decoder_weights(model: Any, arch: DecoderArch) -> Weights:
    """State dict of a LlamaForCausalLM / GPT2LMHeadModel → canonical names."""
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    out: Weights = {}
    qscale = 1.0 / math.sqrt(arch.head_dim)
    if arch.family == "llama":
        g = lambda k: sd["model." + k]  # noqa: E731
        out["emb.word"] = g("embed_tokens.weight")
        for i in range(arch.layers):
            s = f"layers.{i}."
            out[f"L{i}.ln1.g"] = g(s + "input_layernorm.weight")
            out[f"L{i}.ln2.g"] = g(s + "post_attention_layernorm.weight")
            for dst, src, scale in (("q", "q_proj", qscale), ("k", "k_proj", 1.0),
                                    ("v", "v_proj", 1.0), ("o", "o_proj", 1.0)):  # fmt: skip
                out[f"L{i}.{dst}.w"] = g(s + f"self_attn.{src}.weight").T * scale
            for dst in ("gate", "up", "down"):
                out[f"L{i}.{dst}.w"] = g(s + f"mlp.{dst}_proj.weight").T.copy()
        out["final.ln.g"] = g("norm.weight")
        head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    else:
        g = lambda k: sd["transformer." + k]  # noqa: E731
        d = arch.hidden
        out["emb.word"], out["emb.pos"] = g("wte.weight"), g("wpe.weight")
        for i in range(arch.layers):
            s = f"h.{i}."
            for j in (1, 2):
                out[f"L{i}.ln{j}.g"] = g(s + f"ln_{j}.weight")
                out[f"L{i}.ln{j}.b"] = g(s + f"ln_{j}.bias")
            w, b = g(s + "attn.c_attn.weight"), g(s + "attn.c_attn.bias")  # Conv1D: (in, out)
            for j, name in enumerate("qkv"):
                scale = qscale if name == "q" else 1.0
                out[f"L{i}.{name}.w"] = w[:, j * d : (j + 1) * d] * scale
                out[f"L{i}.{name}.b"] = b[j * d : (j + 1) * d] * scale
            out[f"L{i}.o.w"], out[f"L{i}.o.b"] = (
                g(s + "attn.c_proj.weight"),
                g(s + "attn.c_proj.bias"),
            )
            out[f"L{i}.ff1.w"], out[f"L{i}.ff1.b"] = (
                g(s + "mlp.c_fc.weight"),
                g(s + "mlp.c_fc.bias"),
            )
            out[f"L{i}.ff2.w"], out[f"L{i}.ff2.b"] = (
                g(s + "mlp.c_proj.weight"),
                g(s + "mlp.c_proj.bias"),
            )
        out["final.ln.g"], out["final.ln.b"] = g("ln_f.weight"), g("ln_f.bias")
        head = sd.get("lm_head.weight", sd["transformer.wte.weight"])
    out["lm.w"] = head.T.copy()
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def decoder_approx(arch: DecoderArch) -> DecoderApprox:
    """The reference set: SiLU (llama) or GeLU (gpt2) as a fitted odd rsqrt form."""
    form = SILU_REF if arch.family == "llama" else GELU_REF
    return DecoderApprox("reference", OddFormParams(float(form.p), tuple(float(c) for c in form.q)))


class _Recorder(DecoderSites):
    """Probes at every site; min/max of each site's input (unmasked logits only)."""

    def __init__(self, card: DecoderCard) -> None:
        super().__init__(card)
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self.row_max_min: dict[str, float] = {}

    def record(self, name: str, x: Value) -> None:
        t = x.detach().double()
        self.lo[name] = min(self.lo.get(name, math.inf), float(t.min()))
        self.hi[name] = max(self.hi.get(name, -math.inf), float(t.max()))

    def rsqrt(self, name: str) -> RsqrtProbe:  # type: ignore[override]
        return RsqrtProbe(name, self.record)

    def layernorm(self, name: str, eps: float) -> LayerNormSite:
        return LayerNormSite(1.0, eps, RsqrtProbe(name, self.record))  # type: ignore[arg-type]

    def softmax(self, name: str) -> ExpSoftmaxSite:
        return SoftmaxProbe()  # type: ignore[return-value]

    def observe_logits(self, name: str, scores: Value, keep: np.ndarray) -> None:
        k = torch.as_tensor(np.broadcast_to(keep, tuple(scores.shape)).copy()) > 0
        t = scores.detach().double()
        self.lo[name] = min(self.lo.get(name, math.inf), float(t[k].min()))
        self.hi[name] = max(self.hi.get(name, -math.inf), float(t[k].max()))
        row_max = t.masked_fill(~k, -math.inf).amax(dim=-1)
        self.row_max_min[name] = min(self.row_max_min.get(name, math.inf), float(row_max.min()))


def calibrate_decoder(
    card: DecoderCard, weights: Weights, prompts: Sequence[Sequence[int]]
) -> Sites:
    """Fit every site's public constants on prefill passes over `prompts` (token ids).

    Each prefill position sees exactly what a generation step at that position sees
    (causal attention), so prefill calibration covers the steps too. Ranges are
    widened by `MARGIN`; the softmax sites are fitted for rows of up to max_context.
    """
    rec = _Recorder(card)
    ops = PlainBackend(None)
    with torch.no_grad():
        for ids in prompts:
            ids = np.asarray(ids, dtype=np.int64)[None, : card.arch.max_context]
            decoder_forward(ops, card, 0, ids.shape, 0, weights, ids, None, sites=rec)
    a = card.arch
    sites = Sites(ranges={k: (rec.lo[k], rec.hi[k]) for k in rec.lo})
    for name in [f"L{i}.ln{j}" for i in range(a.layers) for j in (1, 2)] + ["final.ln"]:
        lo, hi = rec.lo[name], rec.hi[name]
        scale = 1.0 / math.sqrt(math.sqrt(lo * hi))  # mean square·s² centred on 1
        plan = plan_rsqrt(lo * scale**2 / MARGIN, hi * scale**2 * MARGIN, REL_ERR, prefer="rounds")
        sites.layernorm[name] = LayerNormSite(scale, a.norm_eps, plan)
    for i in range(a.layers):
        name = f"L{i}.act"
        lo, hi = rec.lo[name], rec.hi[name]
        sites.rsqrt[name] = plan_rsqrt(lo / MARGIN, hi * MARGIN, REL_ERR, prefer="bytes")
        name = f"L{i}.logits"
        bound = rec.hi[name]
        span = (bound - rec.lo[name]) * MARGIN
        gap = (bound - rec.row_max_min[name]) * MARGIN
        sites.softmax[f"L{i}.softmax"] = exp_softmax_site(bound, gap, span, a.max_context)
    return sites


def compile_decoder(
    model: Any,
    config: Any,
    prompts: Sequence[Sequence[int]],
    name: str,
    max_context: int = DEFAULT_MAX_CONTEXT,
) -> CompiledDecoder:
    """Convert and calibrate a loaded LlamaForCausalLM / GPT2LMHeadModel.

    Cost: one plaintext prefill per calibration prompt.
    """
    arch = decoder_arch_of(config, max_context)
    weights = decoder_weights(model, arch)
    card = DecoderCard(name, arch, decoder_approx(arch))
    card.sites = calibrate_decoder(card, weights, prompts)
    return CompiledDecoder(card, weights)


def load_causal_lm(model_dir: str | Path) -> tuple[Any, Any, Any]:
    """Load (model, config, tokenizer) of a local causal-LM checkpoint directory (never
    the network); the model in float32, eval mode."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), config, tok


def calibration_prompts(
    tok: Any, texts: Sequence[str] | None = None, max_context: int = DEFAULT_MAX_CONTEXT
) -> list[list[int]]:
    """Token ids of sample texts as plain prompts and, if the tokenizer has a chat
    template, the first half of them as chat prompts too."""
    from common.protocol.calibration_texts import default_calibration_texts

    texts = list(texts or default_calibration_texts())
    prompts = [tok(t)["input_ids"][: max_context // 2] for t in texts]
    if getattr(tok, "chat_template", None):
        for t in texts[: len(texts) // 2]:
            msgs = [{"role": "user", "content": t}]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if not isinstance(ids, list):
                ids = ids["input_ids"]
            prompts.append(list(ids)[: max_context // 2])
    return prompts


def compile_decoder_dir(
    model_dir: str | Path,
    calibration_texts: Sequence[str] | None = None,
    name: str | None = None,
    max_context: int = DEFAULT_MAX_CONTEXT,
) -> tuple[CompiledDecoder, Any]:
    """Load a local causal-LM checkpoint directory (never the network), convert and
    calibrate it on sample texts (`calibration_prompts`). Returns (compiled model,
    tokenizer). Cost: one plaintext prefill per prompt (≈ 7 min for SmolLM2-135M)."""
    path = Path(model_dir)
    model, config, tok = load_causal_lm(path)
    prompts = calibration_prompts(tok, calibration_texts, max_context)
    compiled = compile_decoder(model, config, prompts, name or path.name, max_context)
    return compiled, tok
