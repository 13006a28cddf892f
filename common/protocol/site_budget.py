"""Per-site accuracy targets chosen end to end: each rsqrt site as cheap as the model allows.

Calibration fits every site to a fixed relative error (`calibrate.REL_ERR`, and a
tighter `SMU_REL_ERR` where SMU's square root cancels against x). Those targets are
set for the worst site of any model; most sites of a given model need less. This module
loosens the sites of one compiled model one at a time, greedily by the online bytes
each change saves, and keeps a change only if the whole program — plain float, with
the fitted plans — still stays within `budget` of the same program with exact
functions (1/√x) on every calibration text: max |Δ logit| when the model has a head,
else the largest ‖Δh‖/‖h‖ of a real token. The default budget is `FXP_SHARE` of the
error the fixed-point emulation (the protocol's own arithmetic) already has with the
default targets, so that the approximations stay below the arithmetic noise that the
accuracy table accepts (docs/ACCURACY.md).

Every plan keeps its guarantees (`common.approx.rsqrt_fit`: a proven bound on its
range, bounded and positive outside it); only the bound is looser. The targets are
public (they are part of the card); the search sees only the server's weights and the
public calibration texts.

Cost: one exact and one fixed-point run, then one float run of the calibration sample
per trial (about a second each for the default model; ≈ 2 trials per site).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from common.approx.backend import PlainBackend
from common.approx.functions import LayerNormSite
from common.approx.rsqrt_fit import RsqrtPlan
from common.mpc.ring import FRAC_BITS
from common.protocol.calibrate import (
    SITE_TARGETS_JSON,
    ExactSites,
    SiteRecorder,
    compile_model,
    default_target,
    fit_layernorm_site,
    fit_rsqrt_site,
    fit_sites,
    layernorm_site_names,
    record_sites,
    rsqrt_site_names,
    tokenize_batches,
)
from common.protocol.card import CompiledModel, ModelCard, Sites
from common.protocol.program import ClientInput, Weights, encoder_forward
from common.protocol.run import plain_forward

# Targets a site may take, tightest first; a site moves to the next one that makes its
# plan cheaper.
LADDER = (2.0**-15, 2.0**-12, 2.0**-10, 2.0**-8, 2.0**-7, 2.0**-6, 2.0**-5, 2.0**-4)
FXP_SHARE = 0.5  # budget = this share of the fixed-point emulation's error
OPENING_BYTES = 16  # one opened element: 8 bytes from each party
CALIBRATION_MAX_LENGTH = 128  # as `compile_model` tokenizes the calibration sample


@dataclass
class BudgetReport:
    """What the search chose and measured (all on the calibration sample)."""

    targets: dict[str, float]
    budget: float
    error: float  # the chosen plans' float error against exact functions
    default_error: float  # the same with every site at its default target
    fixed_point_error: float  # the fixed-point emulation with the defaults
    bytes_default: int  # online bytes of the rsqrt sites' openings, defaults
    bytes_chosen: int
    trials: int
    texts: int
    metric: str
    log: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("log")
        return d


def _output_error(ref: NDArray, out: NDArray, keep: NDArray, logits: bool) -> float:
    if logits:
        return float(np.max(np.abs(out - ref)))
    m = keep.astype(bool)
    diff = np.linalg.norm((out - ref)[m], axis=-1)
    return float(np.max(diff / np.maximum(np.linalg.norm(ref[m], axis=-1), 1e-12)))


def _exact_outputs(card: ModelCard, weights: Weights, batches: list[ClientInput]) -> list[NDArray]:
    out = []
    with torch.no_grad():
        for b in batches:
            shape = tuple(b.token_ids.shape)
            y = encoder_forward(
                PlainBackend(None),
                card,
                0,
                (shape[0], shape[1]),
                b.attention_mask,
                weights,
                b,
                sites=ExactSites(card),
            )
            out.append(np.asarray(y, dtype=np.float64))
    return out


def _site_cost(plan: RsqrtPlan | LayerNormSite, count: int) -> tuple[int, int]:
    """(online bytes of the site's openings on the sample, exact rounds)."""
    p = plan.plan if isinstance(plan, LayerNormSite) else plan
    return count * p.openings() * OPENING_BYTES, p.rounds_exact()


def choose_targets(
    card: ModelCard,
    weights: Weights,
    batches: list[ClientInput],
    budget: float | None = None,
    say: Callable[[str], None] | None = None,
) -> BudgetReport:
    """Loosen each site's rsqrt target as far as the end-to-end `budget` allows.

    Returns the targets (only the sites that moved) with what was measured. `budget`
    None: `FXP_SHARE` × the fixed-point emulation's error with the default targets.
    Cost: (2 + trials) plain runs over `batches`."""
    say = say or (lambda m: None)
    logits = card.arch.head != "none"
    metric = "max |Δ logit|" if logits else "max ‖Δh‖/‖h‖ per real token"
    rec: SiteRecorder = record_sites(card, weights, batches)
    exact = _exact_outputs(card, weights, batches)

    def error(sites: Sites, frac_bits: int | None = None) -> float:
        model = CompiledModel(dataclasses.replace(card, sites=sites), weights)
        return max(
            _output_error(ref, plain_forward(model, b, frac_bits), b.attention_mask, logits)
            for ref, b in zip(exact, batches, strict=True)
        )

    ln_names = set(layernorm_site_names(card))
    names = rsqrt_site_names(card, rec) + sorted(ln_names)
    current = {n: default_target(card, n) for n in names}
    sites = fit_sites(card, rec)
    default_err = error(sites)
    fxp_err = error(sites, FRAC_BITS)
    if budget is None:
        budget = FXP_SHARE * fxp_err
    say(f"defaults: float error {default_err:.3g}, fixed point {fxp_err:.3g}; budget {budget:.3g}")

    def plan_of(s: Sites, n: str) -> RsqrtPlan | LayerNormSite:
        return s.layernorm[n] if n in ln_names else s.rsqrt[n]

    def fit(n: str, target: float) -> RsqrtPlan | LayerNormSite:
        if n in ln_names:
            return fit_layernorm_site(card, rec, n, target)
        return fit_rsqrt_site(card, rec, n, target)

    def candidate(n: str) -> tuple[float, RsqrtPlan | LayerNormSite, tuple[int, int]] | None:
        """The tightest looser target whose plan is cheaper, with its saving."""
        now = _site_cost(plan_of(sites, n), rec.count[n])
        for t in LADDER:
            if t <= current[n]:
                continue
            try:
                p = fit(n, t)
            except ValueError:
                continue
            cost = _site_cost(p, rec.count[n])
            if cost[0] < now[0] or (cost[0] == now[0] and cost[1] < now[1]):
                return t, p, (now[0] - cost[0], now[1] - cost[1])
        return None

    bytes_default = sum(_site_cost(plan_of(sites, n), rec.count[n])[0] for n in names)
    err, trials = default_err, 0
    # Each site's next candidate, recomputed only when that site moves (plan fits are
    # linear programs: a few tens of ms each).
    pending = {n: c for n in names if (c := candidate(n)) is not None}
    log: list[str] = []
    while pending:
        n = max(pending, key=lambda k: pending[k][2])
        t, p, saved = pending.pop(n)
        trial = dataclasses.replace(
            sites,
            rsqrt=dict(sites.rsqrt),
            layernorm=dict(sites.layernorm),
        )
        if n in ln_names:
            trial.layernorm[n] = p  # type: ignore[assignment]
        else:
            trial.rsqrt[n] = p  # type: ignore[assignment]
        e = error(trial)
        trials += 1
        ok = e <= budget and math.isfinite(e)
        line = (
            f"{n}: 2^{math.log2(current[n]):.0f} → 2^{math.log2(t):.0f} saves "
            f"{saved[0]:,} B, {saved[1]} rounds; error {e:.3g} {'kept' if ok else 'refused'}"
        )
        log.append(line)
        say(line)
        if ok:
            sites, current[n], err = trial, t, e
            if (c := candidate(n)) is not None:
                pending[n] = c
    bytes_chosen = sum(_site_cost(plan_of(sites, n), rec.count[n])[0] for n in names)
    return BudgetReport(
        targets={n: t for n, t in current.items() if t != default_target(card, n)},
        budget=budget,
        error=err,
        default_error=default_err,
        fixed_point_error=fxp_err,
        bytes_default=bytes_default,
        bytes_chosen=bytes_chosen,
        trials=trials,
        texts=sum(int(b.token_ids.shape[0]) for b in batches),
        metric=metric,
        log=log,
    )


def write_site_targets(
    model_dir: Path,
    approx: str = "auto",
    budget: float | None = None,
    say: Callable[[str], None] | None = None,
) -> BudgetReport:
    """Choose the per-site targets of a checkpoint for one approximation set on the
    default calibration sample and store them beside it (`SITE_TARGETS_JSON`, one entry
    per set, replaced atomically); `compile_model` then fits its plans to them.
    Cost: see `choose_targets` (about a minute for the default model)."""
    from common.protocol.calibration_texts import default_calibration_texts

    model_dir = Path(model_dir)
    compiled, tok = compile_model(model_dir, approx=approx, site_targets=False)
    batches = tokenize_batches(tok, default_calibration_texts(), CALIBRATION_MAX_LENGTH)
    report = choose_targets(compiled.card, compiled.weights, batches, budget, say)
    path = model_dir / SITE_TARGETS_JSON
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc[compiled.card.approx.kind] = report.to_json()
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return report
