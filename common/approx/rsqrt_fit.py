"""Per-site plans for 1/√x by Newton iteration, with no look-up table and no comparison.

A plan is public and fitted to a site's calibrated range [lo, hi] (ratio R = hi/lo):
1. Pre-scale: x' = c·x with c = 1/√(lo·hi), so x' ∈ [R^-1/2, R^1/2] and every
   intermediate stays of order 1 in fixed point (y' = 1/√x' ∈ [R^-1/4, R^1/4]).
2. Start: a degree-d polynomial p(x') fitted by a linear program that minimises the
   ratio max/min of e = p(x')·√x' over the range, rescaled so that e is centred
   (geometrically) on 1.
3. Newton steps with per-step public constants, y ← y·(α − β·x'·y²). In terms of
   e = y·√x' a step maps e ↦ α·e·(1 − γe²), γ = β/α. For the current interval [l, u]
   of e, γ = 1/(l² + lu + u²) makes both ends land on the same value and minimises the
   ratio of the image; α centres the image on 1. On wide intervals that γ puts the
   step's zero 1/√γ just above u, where ~1% fixed-point noise on y² collapses y; γ is
   capped so that the zero stays ≥ (1 + ZERO_MARGIN)·u (`_steps_for`). The interval is
   tracked exactly, so the plan's error bound is a proof over the whole range (checked
   on a dense grid).
4. Output: 1/√x = √c · y.

Cost per element: polynomial powers (degree 1: 0 rounds; 2: 1; 3–4: 2; 5–8: 3), then 2
rounds per step. Bytes follow the openings (8 bytes per element and party each, see
`common.approx.functions._rsqrt_core`): 0/1/2/2/3/3/4/4 for the powers of degree 1…8,
one for x' itself, 3 per step. Element-wise sites take the plan with the fewest
openings (bytes dominate every network profile at transformer sizes), then rounds;
per-row sites (one value per row: bytes are small) the fewest rounds, then openings.

Outside [lo, hi]: the start is constrained (in the LP) to keep 0 ≤ e0 ≤ its in-range
maximum on [lo/5, lo) and (hi, 5·hi], and every step maps [0, u] into [0, u'] (the
map is increasing there and positive below 1/√γ > u). So for any input in
[lo/4, 4·hi] the output is ≥ 0 and bounded by the in-range maximum; it converges towards
1/√x more slowly the further out it lies, and the error is no longer bounded by
`max_rel_err`. The LP holds on its grid only, so `plan_rsqrt` checks every candidate
on a dense grid (`bounded_out_of_range`) and drops those that fail;
`out_of_range_factor()` measures the positive range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

NEAR_FACTOR = 2.0  # plans stay accurate on [lo/NEAR_FACTOR, hi·NEAR_FACTOR] …
NEAR_TOL = 0.2  # … to this relative error (or 2× the target of a rough plan)
NEAR_FLOOR = 0.5  # the start's e there is at least this (in range: 1, before rescaling)
# Every step's zero 1/√γ lies ≥ (1 + ZERO_MARGIN)·u above the interval it is designed
# for, so that fixed-point noise of a few % between steps cannot push e past it.
ZERO_MARGIN = 0.05
OUT_OF_RANGE = 4.0  # every plan is checked: positive and bounded on [lo/4, 4·hi]
_POLY_ROUNDS = {1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 3}
_EXACT_POLY_ROUNDS = {1: 1, 2: 2, 3: 4, 4: 4, 5: 6, 6: 6, 7: 6, 8: 6}
_POLY_OPENINGS = {1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 4, 8: 4}


@dataclass(frozen=True)
class RsqrtPlan:
    """A public rsqrt plan for one site (see the module docstring)."""

    lo: float
    hi: float
    in_scale: float
    poly: tuple[float, ...]
    steps: tuple[tuple[float, float], ...]
    out_scale: float
    max_rel_err: float

    def degree(self) -> int:
        return len(self.poly) - 1

    def rounds(self) -> int:
        """Online rounds per element under local truncation: polynomial powers + 2 per
        Newton step (what the fitter minimises; `rounds_exact` is proportional)."""
        return _POLY_ROUNDS[self.degree()] + 2 * len(self.steps)

    def rounds_exact(self) -> int:
        """Online rounds with exact truncation (the default, `Mpc.trunc_many`): x' and
        the powers' base (1), each opened power and its truncation, the polynomial's
        terms (1), then 4 per Newton step (open y; truncate y² and x'·y; open them;
        truncate a·y − b·t)."""
        return 1 + _EXACT_POLY_ROUNDS[self.degree()] + 4 * len(self.steps)

    def products(self) -> int:
        """Share×share products per element: d − 1 powers + 3 per step."""
        return self.degree() - 1 + 3 * len(self.steps)

    def openings(self) -> int:
        """Values opened per element (8 bytes each per party): the powers', x'
        (when there are steps) and 3 per step."""
        s = len(self.steps)
        return _POLY_OPENINGS[self.degree()] + (1 if s else 0) + 3 * s

    def evaluate(self, x: NDArray | float) -> NDArray[np.float64]:
        """Float64 emulation of exactly the protocol's arithmetic."""
        xs = np.asarray(x, dtype=np.float64) * self.in_scale
        y = np.polynomial.polynomial.polyval(xs, self.poly)
        for a, b in self.steps:
            y = y * (a - b * xs * y * y)
        return y * self.out_scale

    def near_range_error(self) -> float:
        """Worst relative error on [lo/NEAR_FACTOR, lo) ∪ (hi, hi·NEAR_FACTOR] (float)."""
        x = np.concatenate(
            [
                np.geomspace(self.lo / NEAR_FACTOR, self.lo, 1001),
                np.geomspace(self.hi, self.hi * NEAR_FACTOR, 1001),
            ]
        )
        with np.errstate(all="ignore"):
            e = self.evaluate(x) * np.sqrt(x)
        return float(np.max(np.abs(e - 1))) if np.all(np.isfinite(e)) else math.inf

    def out_of_range_factor(self) -> float:
        """Largest factor f such that inputs in [lo/f, hi·f] keep a positive first step."""
        for f in (16.0, 8.0, 4.0, 2.0, 1.5, 1.0):
            x = np.geomspace(self.lo / f, self.hi * f, 2001)
            with np.errstate(all="ignore"):
                y = self.evaluate(x)
            if np.all(np.isfinite(y)) and np.all(y > 0):
                return f
        return 1.0

    def bounded_out_of_range(self, factor: float = 4.0) -> bool:
        """On a dense grid of [lo/factor, hi·factor]: the output is finite, positive
        and e = y·√x at most the in-range maximum 1 + max_rel_err (float)."""
        x = np.geomspace(self.lo / factor, self.hi * factor, 8001)
        with np.errstate(all="ignore"):
            e = self.evaluate(x) * np.sqrt(x)
        return bool(np.all(np.isfinite(e)) and np.all(e > 0)) and bool(
            np.all(e <= 1 + self.max_rel_err * 1.01 + 1e-12)
        )

    def to_dict(self) -> dict:
        return {
            "lo": self.lo,
            "hi": self.hi,
            "in_scale": self.in_scale,
            "poly": list(self.poly),
            "steps": [list(s) for s in self.steps],
            "out_scale": self.out_scale,
            "max_rel_err": self.max_rel_err,
        }

    @classmethod
    def from_dict(cls, d: dict) -> RsqrtPlan:
        return cls(
            float(d["lo"]),
            float(d["hi"]),
            float(d["in_scale"]),
            tuple(float(c) for c in d["poly"]),
            tuple((float(a), float(b)) for a, b in d["steps"]),
            float(d["out_scale"]),
            float(d["max_rel_err"]),
        )


def _fit_start(a: float, b: float, degree: int) -> tuple[np.ndarray, float]:
    """LP: minimise t subject to 1 ≤ p(x)·√x ≤ t on a log grid of [a, b], and
    0 ≤ p(x)·√x ≤ t on [a/5, a) and (b, 5b] so that inputs up to 4× outside the range
    start inside the interval the Newton steps are designed for (see module doc).

    Returns (coefficients rescaled so that e ∈ [1/√t, √t] on the range, t)."""
    x = np.geomspace(a, b, 400)
    # Outside the range (4× strictly inside on both sides): no sign flip, no overshoot.
    xo = np.concatenate([np.geomspace(a / 5, a, 100)[:-1], np.geomspace(b, 5 * b, 100)[1:]])
    n = degree + 1

    def rows(v: np.ndarray) -> np.ndarray:
        # basis (x/b)^i for conditioning; coefficients are converted back below
        return np.vander(v / b, n, increasing=True) * np.sqrt(v)[:, None]

    V, Vo = rows(x), rows(xo)
    c = np.zeros(n + 1)
    c[-1] = 1.0  # minimise t
    ones, zeros = np.ones((len(x), 1)), np.zeros((len(x), 1))
    ones_o, zeros_o = np.ones((len(xo), 1)), np.zeros((len(xo), 1))
    A_ub = np.vstack(
        [
            np.hstack([V, -ones]),  # e ≤ t
            np.hstack([-V, zeros]),  # e ≥ 1
            np.hstack([Vo, -ones_o]),  # outside the range: e ≤ t
            np.hstack([-Vo, zeros_o]),  # outside: e ≥ floor (strictly positive)
        ]
    )
    # Near the range the start must not dip (the steps then recover, `near_range_error`);
    # further out, strictly positive suffices for boundedness.
    near = (xo >= a / NEAR_FACTOR) & (xo <= b * NEAR_FACTOR)
    floor = np.where(near, NEAR_FLOOR, 1 / 64)
    b_ub = np.concatenate([np.zeros(len(x)), -np.ones(len(x)), np.zeros(len(xo)), -floor])
    from scipy.optimize import linprog  # lazily: only fitting needs it (not a client)

    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=[(None, None)] * n + [(1.0, None)])
    if not res.success:
        raise ValueError(f"start polynomial fit failed on [{a}, {b}]: {res.message}")
    coef = res.x[:n]
    # The LP holds on its grid only: the interval the steps are designed for is measured
    # on a much denser one (between grid points e can dip slightly below 1). It covers
    # every start value, including those above the range.
    e = rows(np.geomspace(a, b, 20001)) @ coef
    eo = rows(np.concatenate([np.geomspace(a / 5, a, 2001), np.geomspace(b, 5 * b, 2001)])) @ coef
    lo_e, hi_e = float(e.min()), float(max(e.max(), eo.max()))
    scale = 1.0 / math.sqrt(lo_e * hi_e)
    return coef * scale / b ** np.arange(n), hi_e / lo_e


def _steps_for(l: float, u: float, rel_err: float, max_steps: int) -> list[tuple[float, float]]:
    """Per-step (α, γ) until the e-interval is within 1 ± rel_err.

    γ = 1/(l² + lu + u²) is optimal for the exact interval, but its zero 1/√γ tends to
    u itself as l/u → 0: on a wide interval a value a little above u (fixed-point
    rounding of y² between steps) lands past the zero and collapses. So γ is capped to
    keep the zero at least (1 + `ZERO_MARGIN`)·u; the image of [l, u] is then tracked
    exactly ([min of the ends, max at e* or an end]). Narrow intervals (l/u > 0.1) are
    unaffected; [0, u] still maps into [0, u'] (the out-of-range guarantee).
    """
    steps: list[tuple[float, float]] = []
    while True:
        err = (u - l) / (u + l)
        if err <= rel_err:
            return steps
        if len(steps) >= max_steps:
            raise ValueError("not reachable")
        g = min(1.0 / (l * l + l * u + u * u), 1.0 / ((1.0 + ZERO_MARGIN) * u) ** 2)
        es = 1.0 / math.sqrt(3.0 * g)  # the image's maximum, 2/3·e*

        def f(e: float, g: float = g) -> float:
            return e * (1.0 - g * e * e)

        top = f(es) if l <= es <= u else max(f(l), f(u))
        bot = min(f(l), f(u))
        alpha = 2.0 / (top + bot)
        steps.append((alpha, alpha * g))
        l, u = alpha * bot, alpha * top


def plan_rsqrt(
    lo: float,
    hi: float,
    rel_err: float = 2.0**-12,
    max_degree: int = 4,
    max_steps: int = 16,
    prefer: str = "bytes",
) -> RsqrtPlan:
    """The cheapest plan reaching `rel_err` on [lo, hi]: fewest openings, then rounds
    (`prefer="bytes"`, for element-wise sites), or fewest rounds, then openings
    (`prefer="rounds"`, for sites with one value per row, whose bytes are small)."""
    if prefer not in ("bytes", "rounds"):
        raise ValueError("prefer must be 'bytes' or 'rounds'")
    if not (lo > 0 and hi > lo and math.isfinite(hi)):
        raise ValueError(f"rsqrt range must satisfy 0 < lo < hi < inf, got [{lo}, {hi}]")
    if not 0 < rel_err < 1:
        raise ValueError("rel_err must be in (0, 1)")
    c = 1.0 / math.sqrt(lo * hi)
    a, b = lo * c, hi * c
    best: RsqrtPlan | None = None
    for d in range(1, max_degree + 1):
        try:
            coef, t = _fit_start(a, b, d)
            steps = _steps_for(1 / math.sqrt(t), math.sqrt(t), rel_err, max_steps)
        except ValueError:
            continue
        plan = RsqrtPlan(
            float(lo),
            float(hi),
            c,
            tuple(float(v) for v in coef),
            tuple((float(al), float(be)) for al, be in steps),
            math.sqrt(c),
            0.0,
        )
        x = np.geomspace(lo, hi, 20001)
        err = float(np.max(np.abs(plan.evaluate(x) * np.sqrt(x) - 1)))
        plan = RsqrtPlan(plan.lo, plan.hi, c, plan.poly, plan.steps, plan.out_scale, err)
        if err > rel_err * 1.01:
            continue  # the LP's start was off between its grid points; another degree
        if plan.near_range_error() > max(NEAR_TOL, 2 * rel_err):
            continue  # accurate in range but lost just outside it (module docstring)
        if not plan.bounded_out_of_range(OUT_OF_RANGE):
            continue  # the LP's start dipped below 0 between its grid points out there
        if best is None or _cost(plan, prefer) < _cost(best, prefer):
            best = plan
    if best is None:
        raise ValueError(
            f"no plan reaches relative error {rel_err:g} on [{lo:g}, {hi:g}] within "
            f"{max_steps} steps (degree ≤ {max_degree})"
        )
    return best


def _cost(plan: RsqrtPlan, prefer: str) -> tuple[int, int]:
    o, r = plan.openings(), plan.rounds()
    return (o, r) if prefer == "bytes" else (r, o)


def crypten_rsqrt(x: NDArray | float, steps: int = 3) -> NDArray[np.float64]:
    """Float emulation of CrypTen 0.4's inv_sqrt (for comparison): exp-based start
    y0 = 2.2·exp(−(x/2 + 0.2)) + 0.2 − x/1024, exp(z) = (1 + z/256)^256, then
    y ← y·(3 − x·y²)/2."""
    x = np.asarray(x, dtype=np.float64)
    z = 1.0 - (x / 2 + 0.2) / 256
    for _ in range(8):
        z = z * z
    y = 2.2 * z + 0.2 - x / 1024
    for _ in range(steps):
        y = y * (3 - x * y * y) / 2
    return y


def crypten_rsqrt_cost(steps: int = 3) -> tuple[int, int]:
    """(rounds, products) per element of `crypten_rsqrt`: 8 squarings, 3 per step."""
    return 8 + 3 * steps, 8 + 3 * steps
