"""`comet-bench sites`: every rsqrt site of a compiled model, and CrypTen on the same range.

For each site: the calibrated range (observed; the plan covers it widened by the
calibration margin), the chosen start degree, Newton steps, rounds, products and
openings (8 bytes per party each) per element, the plan's worst relative error over
its range, and CrypTen 0.4's inv_sqrt (exp-based start, 3 Newton steps, 17 rounds) on
the same range — float emulation, so the comparison isolates the method from
fixed-point effects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from common.approx.rsqrt_fit import RsqrtPlan, crypten_rsqrt, crypten_rsqrt_cost
from common.protocol.calibrate import compile_model


def _crypten_err(lo: float, hi: float) -> float:
    x = np.geomspace(lo, hi, 4001)
    with np.errstate(all="ignore"):
        err = np.abs(crypten_rsqrt(x) * np.sqrt(x) - 1)
    return float(np.nanmax(np.where(np.isfinite(err), err, np.inf)))


def site_rows(card: Any) -> list[dict[str, Any]]:
    """One row per rsqrt site of a model card."""
    plans: list[tuple[str, str, RsqrtPlan]] = []
    for name, plan in card.sites.rsqrt.items():
        plans.append((name, name, plan))
    for name, ln in card.sites.layernorm.items():
        plans.append((name, name, ln.plan))
    for name, sm in card.sites.softmax.items():
        plans.append((name + ".first", name, sm.first_plan))
        plans.append((name + ".stage", name, sm.stage_plan))
        plans.append((name + ".final", name, sm.final_plan))
    c_rounds, c_products = crypten_rsqrt_cost(3)
    rows = []
    for site, observed_key, plan in plans:
        observed = card.sites.ranges.get(observed_key)
        rows.append(
            {
                "site": site,
                "observed": list(observed) if observed else None,
                "plan_range": [plan.lo, plan.hi],
                "ratio": plan.hi / plan.lo,
                "degree": plan.degree(),
                "steps": len(plan.steps),
                "rounds": plan.rounds(),
                "products": plan.products(),
                "openings": plan.openings(),
                "max_rel_err": plan.max_rel_err,
                "crypten_rounds": c_rounds,
                "crypten_products": c_products,
                # Beaver openings: 1 per squaring, per step y² (1), x·y² (2), y·(…) (2)
                "crypten_openings": 8 + 5 * 3,
                "crypten_max_rel_err": _crypten_err(plan.lo, plan.hi),
            }
        )
    return rows


def run_sites(
    model: str, approx: str = "auto", progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    from benchmarks.model import resolve_model

    path = resolve_model(model)
    if progress:
        progress(f"compiling {path} ({approx}) …")
    compiled, _ = compile_model(path, approx=approx)
    return {
        "meta": {"model": str(path), "approx": compiled.card.approx.kind},
        "sites": site_rows(compiled.card),
    }
