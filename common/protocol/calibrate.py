"""Compile a checkpoint for private execution: weights, public card, calibrated sites.

Calibration runs the same program on the float back-end over sample texts, with every
`rsqrt` replaced by a probe that records its input, and fits each site's plan to the
observed range widened by `MARGIN` on both sides (a public constant: a factor on
positive quantities). Inputs outside a calibrated range still give a bounded result
(see `common.approx.rsqrt_fit`) but lose accuracy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from common.approx.backend import PlainBackend, Value
from common.approx.functions import (
    ExpSoftmaxSite,
    LayerNormSite,
    OddFormParams,
    RsqrtProbe,
    SoftmaxProbe,
    exp_softmax_site,
)
from common.approx.rsqrt_fit import RsqrtPlan, plan_rsqrt
from common.protocol.card import (
    ApproxConfig,
    CompiledModel,
    ModelCard,
    OutputBounds,
    Sites,
    weight_log2_of,
)
from common.protocol.hf import architecture_of, canonical_weights, load_hf
from common.protocol.program import ClientInput, SiteSource, Weights, encoder_forward
from common.protocol.public_tables import PublicTableError, read_marker, table_digest

MARGIN = 2.0  # calibrated ranges are widened to [lo / MARGIN, hi · MARGIN]
REL_ERR = 2.0**-12  # rsqrt target relative error at every accurate site
# SMU's √ cancels against x for negative x (smu(−17) ≈ αx + μ²/68), so its absolute
# error is |x|·rel_err: these sites get a tighter target (about one more step).
SMU_REL_ERR = 2.0**-15


def site_rel_err(name: str, approx_kind: str) -> float:
    """The default rsqrt accuracy target of a site (by its name and the approximation
    set); a card's adaptation may loosen it per site (`common.protocol.site_budget`)."""
    smu_site = name.endswith(".softmax.relu") or (approx_kind == "comet" and name.endswith(".gelu"))
    return SMU_REL_ERR if smu_site else REL_ERR


def exact_floor(card: ModelCard, name: str) -> float | None:
    """A public lower bound of a site's rsqrt input that holds by construction, or None.

    SMU sites see ((1−α)x)² + μ² ≥ μ², the algebraic tanh 1 + x² ≥ 1, the reference
    set's odd forms (GeLU, tanh) x² + p ≥ p: their plans need not reach below that
    floor (the calibration margin is applied upwards only), which halves the plan's
    range ratio for free. `FLOOR_SLACK` covers the fixed-point rounding of the square
    (a few 2^-f) below the floor."""
    ap = card.approx
    if name == "pool.act" and card.arch.pooler_act == "relu":
        return ap.relu_form_mu**2  # the pooler ReLU as SMU, in both sets
    if ap.kind == "reference":
        if name.endswith(".gelu") and ap.gelu_form is not None:
            return ap.gelu_form.p
        if name == "pool.act" and ap.tanh_form is not None:
            return ap.tanh_form.p
        return None
    if name.endswith(".gelu") and ap.smu is not None:
        return ap.smu.mu**2
    if name.endswith(".softmax.relu"):
        return ap.relu_mu**2
    if name == "pool.act":
        return 1.0  # algebraic tanh
    return None


FLOOR_SLACK = 2.0**-6  # plans start at floor / (1 + FLOOR_SLACK)


NORM_REL_ERR = 0.25  # the exp-softmax row normaliser only needs a rough scale


class ExactSites(SiteSource):
    """Site source with the exact functions: every rsqrt is 1/√x, the exp-softmax is
    softmax (plain float back-end only). What is left of the approximation set is its
    fixed forms (SMU, ReLU-softmax, the reference GeLU/tanh forms), so the program then
    computes a checkpoint's own function up to float rounding wherever those forms are
    the checkpoint's (calibration; import checks against transformers)."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card)
        self.card = card

    def record(self, name: str, x: Value) -> None:
        """Called with every rsqrt input (no-op here)."""

    def rsqrt(self, name: str) -> RsqrtProbe:  # type: ignore[override]
        return RsqrtProbe(name, self.record)

    def layernorm(self, name: str, eps: float) -> LayerNormSite:
        return LayerNormSite(1.0, eps, RsqrtProbe(name, self.record))  # type: ignore[arg-type]

    def softmax(self, name: str) -> ExpSoftmaxSite:
        return SoftmaxProbe()  # type: ignore[return-value]


class SiteRecorder(ExactSites):
    """Site source for calibration: exact functions, min/max of each site's input."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card)
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self.count: dict[str, int] = {}  # elements seen per site (padding included)
        self.logit_rows: dict[str, list[float]] = {}
        self.keep: NDArray | None = None  # the current batch's padding mask
        self.outputs: dict[str, tuple[float, float]] = {}  # observed output ranges

    def _widen(self, key: str, lo: float, hi: float) -> None:
        old = self.outputs.get(key, (math.inf, -math.inf))
        self.outputs[key] = (min(old[0], lo), max(old[1], hi))

    def record(self, name: str, x: Value) -> None:
        t = x.detach().double()
        self.lo[name] = min(self.lo.get(name, math.inf), float(t.min()))
        self.hi[name] = max(self.hi.get(name, -math.inf), float(t.max()))
        self.count[name] = self.count.get(name, 0) + t.numel()

    def observe(self, name: str, value: Value) -> None:
        if name == "output.hidden":
            # real tokens only: padded positions are not part of any answer
            assert self.keep is not None
            t = value.detach().double()[torch.as_tensor(self.keep, dtype=torch.bool)]
            norms = t.norm(dim=-1)
            for key, v in (("hidden", t), ("hidden_norm", norms)):
                self._widen(key, float(v.min()), float(v.max()))
            return
        if name == "output.logits":
            t = value.detach().double()
            self._widen("logits", float(t.min()), float(t.max()))
            return
        self.record(name, value)
        if name.endswith(".logits"):
            # Row maxima of real (unpadded) rows: how far below the bound rows can sit.
            self.logit_rows.setdefault(name, []).append(float(value.amax(dim=-1).min()))


def _run(card: ModelCard, weights: Weights, batches: list[ClientInput], rec: SiteRecorder) -> None:
    ops = PlainBackend(None)
    with torch.no_grad():
        for b in batches:
            shape = b.token_ids.shape
            rec.keep = b.attention_mask
            encoder_forward(
                ops, card, 0, (shape[0], shape[1]), b.attention_mask, weights, b, sites=rec
            )


def record_sites(card: ModelCard, weights: Weights, batches: list[ClientInput]) -> SiteRecorder:
    """Run the program with exact functions over `batches` (plain float) and record
    every site's input range and element count."""
    rec = SiteRecorder(card)
    _run(card, weights, batches, rec)
    return rec


def rsqrt_site_names(card: ModelCard, rec: SiteRecorder) -> list[str]:
    """The recorded sites that get an rsqrt plan (LayerNorms are separate)."""
    return [
        n
        for n in rec.lo
        if n.endswith((".gelu", ".softmax.relu", ".softmax.sum")) or n == "pool.act"
    ]


def layernorm_site_names(card: ModelCard) -> list[str]:
    a = card.arch
    return ["emb.ln"] + [f"L{i}.ln{j}" for i in range(a.layers) for j in (1, 2)]


def fit_rsqrt_site(card: ModelCard, rec: SiteRecorder, name: str, rel_err: float) -> RsqrtPlan:
    """The plan of one element-wise or per-row rsqrt site at `rel_err` on its recorded
    range, widened by `MARGIN` (upwards only above an `exact_floor`)."""
    lo, hi = rec.lo[name], rec.hi[name]
    if not lo > 0:
        raise ValueError(f"site {name}: non-positive rsqrt input {lo} during calibration")
    floor = exact_floor(card, name)
    plan_lo = lo / MARGIN if floor is None else min(lo, floor) / (1 + FLOOR_SLACK)
    # Element-wise sites (a value per activation) save bytes; per-row ones rounds.
    per_row = name.endswith(".softmax.sum") or name == "pool.act"
    return plan_rsqrt(
        plan_lo, hi * MARGIN, rel_err=rel_err, prefer="rounds" if per_row else "bytes"
    )


def fit_layernorm_site(
    card: ModelCard, rec: SiteRecorder, name: str, rel_err: float = REL_ERR
) -> LayerNormSite:
    """One LayerNorm's pre-scale and plan at `rel_err` on its recorded variance range."""
    lo, hi = rec.lo[name], rec.hi[name]
    scale = 1.0 / math.sqrt(math.sqrt(lo * hi))  # var·s² centred (geometrically) on 1
    plan = plan_rsqrt(
        lo * scale**2 / MARGIN, hi * scale**2 * MARGIN, rel_err=rel_err, prefer="rounds"
    )
    return LayerNormSite(scale, card.arch.ln_eps, plan)


def default_target(card: ModelCard, name: str) -> float:
    """A site's rsqrt target before any per-site budget: `site_rel_err`, `REL_ERR` for
    LayerNorms."""
    if name in layernorm_site_names(card):
        return REL_ERR
    return site_rel_err(name, card.approx.kind)


def fit_sites(
    card: ModelCard, rec: SiteRecorder, targets: Mapping[str, float] | None = None
) -> Sites:
    """Every site's public constants from recorded ranges; `targets` overrides the
    default rsqrt accuracy of the sites it names (`common.protocol.site_budget`)."""
    targets = targets or {}
    unknown = set(targets) - set(rsqrt_site_names(card, rec)) - set(layernorm_site_names(card))
    if unknown:
        raise ValueError(f"accuracy targets for unknown sites: {sorted(unknown)}")
    sites = Sites()
    for name in rec.lo:
        sites.ranges[name] = (rec.lo[name], rec.hi[name])
    for name in layernorm_site_names(card):
        sites.layernorm[name] = fit_layernorm_site(
            card, rec, name, targets.get(name, default_target(card, name))
        )
    for name in rsqrt_site_names(card, rec):
        sites.rsqrt[name] = fit_rsqrt_site(
            card, rec, name, targets.get(name, default_target(card, name))
        )
    sites.output = output_bounds(rec.outputs)
    a = card.arch
    if card.approx.kind == "reference":
        for i in range(a.layers):
            name = f"L{i}.logits"
            bound = rec.hi[name]
            span = (bound - rec.lo[name]) * MARGIN
            gap = (bound - min(rec.logit_rows[name])) * MARGIN
            sites.softmax[f"L{i}.softmax"] = exp_softmax_site(bound, gap, span, a.max_positions)
    return sites


def calibrate(
    card: ModelCard,
    weights: Weights,
    batches: list[ClientInput],
    targets: Mapping[str, float] | None = None,
) -> Sites:
    """Fit every site's public constants on `batches` (plain float runs); `targets`:
    per-site rsqrt accuracy (default: `default_target`)."""
    return fit_sites(card, record_sites(card, weights, batches), targets)


OUTPUT_MARGIN = 1.0  # output ranges are widened by this many times their width each way
OUTPUT_NORM_FACTOR = 2.0  # hidden-state norms: [lo / factor, hi · factor]


def output_bounds(observed: dict[str, tuple[float, float]]) -> OutputBounds:
    """Public output bounds from the calibration sample's observed output ranges.

    A range [lo, hi] becomes [lo − m·w, hi + m·w], w = hi − lo, m = `OUTPUT_MARGIN`; the
    hidden-state norm range [lo / 2, hi · 2]. A correct output of an unseen text lies
    far inside (a LayerNorm output is bounded by its gains and biases; logits by the
    head's weights), while a failed truncation is off by ~2^(64−2f) (docs/SECURITY.md).
    """

    def widen(key: str) -> tuple[float, float]:
        lo, hi = observed[key]
        w = hi - lo
        return lo - OUTPUT_MARGIN * w, hi + OUTPUT_MARGIN * w

    nlo, nhi = observed["hidden_norm"]
    return OutputBounds(
        widen("hidden"),
        (nlo / OUTPUT_NORM_FACTOR, nhi * OUTPUT_NORM_FACTOR),
        widen("logits") if "logits" in observed else None,
    )


SITE_TARGETS_JSON = "site_targets.json"


def read_site_targets(model_dir: Path, approx_kind: str) -> dict[str, float]:
    """The per-site rsqrt targets chosen for this checkpoint and approximation set
    (`comet-adapt`, `common.protocol.site_budget`), or {} (every site at its default)."""
    p = Path(model_dir) / SITE_TARGETS_JSON
    if not p.is_file():
        return {}
    entry = json.loads(p.read_text()).get(approx_kind)
    if entry is None:
        return {}
    return {str(k): float(v) for k, v in entry["targets"].items()}


def read_comet_json(model_dir: Path) -> dict | None:
    p = Path(model_dir) / "comet.json"
    return json.loads(p.read_text()) if p.is_file() else None


def approx_for(model_dir: Path, requested: str = "auto") -> ApproxConfig:
    """The approximation set: `comet` needs an adapted checkpoint (comet.json)."""
    meta = read_comet_json(model_dir)
    if requested == "auto":
        requested = "comet" if meta else "reference"
    from common.approx.forms import GELU_REF, TANH_REF

    gelu = OddFormParams(float(GELU_REF.p), tuple(float(c) for c in GELU_REF.q))
    tanh = OddFormParams(float(TANH_REF.p), tuple(float(c) for c in TANH_REF.q))
    if requested == "reference":
        return ApproxConfig("reference", gelu_form=gelu, tanh_form=tanh)
    if requested != "comet":
        raise ValueError(f"unknown approximation set {requested!r}")
    if meta is None:
        raise ValueError(
            f"{model_dir} is not in Comet form (no comet.json): adapt it with `comet-adapt`, "
            "or use the reference set"
        )
    from common.approx.functions import SmuParams

    return ApproxConfig(
        "comet",
        smu=SmuParams(float(meta["gelu"]["alpha"]), float(meta["gelu"]["mu"])),
        relu_mu=float(meta["softmax"]["mu"]),
        relu_eps=float(meta["softmax"]["eps"]),
    )


def tokenize_batches(
    tokenizer, texts: Sequence[str], max_length: int, batch: int = 16
) -> list[ClientInput]:
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(
            list(texts[i : i + batch]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        out.append(ClientInput(enc["input_ids"].astype(np.int64), enc["attention_mask"]))
    return out


def compile_loaded(
    model: object,
    config: object,
    approx: ApproxConfig,
    batches: list[ClientInput],
    name: str,
    public_embeddings: bool = False,
    embedding_source: tuple[str, str] | None = None,
    targets: Mapping[str, float] | None = None,
) -> CompiledModel:
    """Convert and calibrate an already loaded HF model (see `compile_model`).

    embedding_source: (public source, table digest) when the word table is public
    (`common.protocol.public_tables`); implies public embeddings. targets: per-site
    rsqrt accuracy (`common.protocol.site_budget`).
    """
    arch = architecture_of(model, config)
    weights = canonical_weights(model, arch)
    src, digest = embedding_source or ("", "")
    if src and table_digest(weights["emb.word"]) != digest:
        raise PublicTableError(f"{name}: the word table does not match the public {src!r} one")
    card = ModelCard(
        name, arch, approx, Sites(), public_embeddings or bool(src), src, digest,
        weight_log2_of(weights),
    )  # fmt: skip
    card.sites = calibrate(card, weights, batches, targets)
    return CompiledModel(card, weights)


def compile_model(
    model_dir: str | Path,
    approx: str = "auto",
    calibration_texts: Sequence[str] | None = None,
    max_length: int = 128,
    public_embeddings: bool = False,
    name: str | None = None,
    site_targets: bool = True,
) -> tuple[CompiledModel, object]:
    """Load, convert and calibrate a checkpoint directory. Returns (model, tokenizer).

    approx: "comet" (needs comet.json from `comet-adapt`), "reference", or "auto".
    site_targets: use the per-site accuracy targets stored beside the checkpoint
    (`SITE_TARGETS_JSON`, written by `comet-adapt`); False fits every site at its
    default.
    Cost: a few plaintext forward passes over the calibration sample.
    """
    from transformers import AutoTokenizer

    from common.protocol.calibration_texts import default_calibration_texts

    model_dir = Path(model_dir)
    model, config = load_hf(model_dir)
    # A checkpoint whose word table is a public one's (comet-adapt's default) serves it
    # as public: the client looks rows up locally, no HE lookup (docs/SECURITY.md).
    source = read_marker(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    texts = list(calibration_texts or default_calibration_texts())
    approx_cfg = approx_for(model_dir, approx)
    compiled = compile_loaded(
        model,
        config,
        approx_cfg,
        tokenize_batches(tokenizer, texts, max_length),
        name or model_dir.name,
        public_embeddings,
        source,
        read_site_targets(model_dir, approx_cfg.kind) if site_targets else None,
    )
    return compiled, tokenizer
