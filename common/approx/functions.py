"""The non-linear functions, written once against `Backend`.

Everything here is built from additions, public multiplications, products and the
`rsqrt` of `common.approx.rsqrt_fit` plans — no look-up table, no comparison. Each
function's cost is given per element of its input, in rounds (sequential message
exchanges) and products (Beaver triples or square pairs); an `RsqrtPlan` costs
`plan.rounds()` rounds and `plan.products()` products.

Sites: every call of `rsqrt` is a *site* with its own public plan fitted to the
range calibrated for it (`common.protocol.calibrate`). Outside that range the
iteration stays bounded but loses accuracy (see `rsqrt_fit`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from common.approx.backend import Backend, Group, Raw, Value
from common.approx.rsqrt_fit import RsqrtPlan, plan_rsqrt
from common.mpc.correlations import Bind


class _Layout:
    """Named masks and products of one `Group` (see `Backend.group`)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.shapes: list[tuple[int, ...]] = []
        self.pairs: list[tuple[int, int]] = []

    def mask(self, name: str, shape: tuple[int, ...]) -> None:
        self.index[name] = len(self.shapes)
        self.shapes.append(tuple(shape))

    def pair(self, a: str, b: str) -> None:
        i, j = sorted((self.index[a], self.index[b]))
        self.pairs.append((i, j))

    def build(self, ops: Backend) -> _Named:
        return _Named(ops.group(self.shapes, self.pairs), self.index)


class _Named:
    def __init__(self, g: Group, index: dict[str, int]) -> None:
        self.g, self.index = g, index

    def open(self, **values: Value) -> None:
        self.g.open({self.index[k]: v for k, v in values.items()})

    def mul(self, a: str, b: str) -> Value:
        return self.g.mul(self.index[a], self.index[b])

    def mul_many(self, pairs: list[tuple[str, str]]) -> list[Value]:
        return self.g.mul_many([(self.index[a], self.index[b]) for a, b in pairs])

    def mul_raw(self, a: str, b: str) -> Raw:
        return self.g.mul_raw(self.index[a], self.index[b])


# Powers u^k from the opened values u, u², u⁴ (and u³ for degree 7–8): k → the pair.
_POWER_PAIRS = {2: ("u", "u"), 3: ("u", "u2"), 4: ("u2", "u2"), 5: ("u", "u4"),
                6: ("u2", "u4"), 7: ("u3", "u4"), 8: ("u4", "u4")}  # fmt: skip


def _power_masks(lay: _Layout, d: int, shape: tuple[int, ...]) -> None:
    for name, need in (("u", d >= 2), ("u2", d >= 3), ("u4", d >= 5), ("u3", d >= 7)):
        if need:
            lay.mask(name, shape)
    for k in range(2, d + 1):
        lay.pair(*_POWER_PAIRS[k])


def _powers(g: _Named | None, u: Value, d: int) -> dict[int, Value]:
    """u^1..u^d: open u (d ≥ 2), u² (d ≥ 3), u⁴ [and u³] (d ≥ 5); every power is then
    a local product of two open values. Rounds: 0, 1, 2, 2, 3, 3, 3, 3 for d = 1…8;
    openings (8 bytes each per element): 0, 1, 2, 2, 3, 3, 4, 4."""
    p = {1: u}
    if d < 2:
        return p
    assert g is not None
    # Powers that are opened again are truncated (together, one round each time);
    # the others stay `Raw`: `_poly_sum` truncates them once with their coefficient.
    opened = {2} | ({4} if d >= 5 else set()) | ({3} if d >= 7 else set())

    def take(ks: list[int]) -> None:
        cut = [k for k in ks if k in opened]
        p.update(zip(cut, g.mul_many([_POWER_PAIRS[k] for k in cut]), strict=True))
        p.update({k: g.mul_raw(*_POWER_PAIRS[k]) for k in ks if k not in opened})

    g.open(u=u)
    take([2] if d >= 3 else [])
    if d == 2:
        p[2] = g.mul_raw("u", "u")
    if d >= 3:
        g.open(u2=p[2])
        take([k for k in (3, 4) if k <= d])
    if d >= 5:
        g.open(u4=p[4], **({"u3": p[3]} if d >= 7 else {}))
        take(list(range(5, d + 1)))
    return p


def _poly_sum(
    ops: Backend, x: Value, p: dict[int, Value], coeffs: tuple[float, ...], scale: float
) -> Value:
    # The linear term from x itself: full precision where x is small. The terms are
    # summed raw and truncated once (one round, one truncation per element).
    items = [ops.scaled(x, coeffs[1])] + [
        ops.scaled(p[k], coeffs[k] * scale**k) for k in range(2, len(coeffs)) if coeffs[k] != 0.0
    ]
    (acc,) = ops.trunc_many([ops.raw_sum([(t, 1) for t in items])])
    return ops.add_public(acc, coeffs[0])


def poly(ops: Backend, x: Value, coeffs: tuple[float, ...], norm: float = 1.0) -> Value:
    """Σ coeffs[i]·x^i. Powers from opened values in log depth (`_powers`).

    With `norm` > 1 (a public bound on |x|), the powers are taken of u = x/norm and the
    coefficients scaled by norm^i: the same polynomial, but every power stays ≤ 1 in
    range. Why: a share product is truncated locally, which fails (an error of
    2^(64−f)) with probability |product|·2^(2f−64); x^4 at |x| ≈ 300 would make that
    likely, while c_i·x^i itself is small (docs/SECURITY.md, "Truncation").

    Cost: degree 1: 0 rounds; 2: 1 round; 3–4: 2; 5–8: 3; 8 bytes per element per
    opened power (see `_powers`).
    """
    d = len(coeffs) - 1
    if d < 1 or d > 8:
        raise ValueError("polynomial degree must be 1..8")
    base = ops.trunc_many([ops.scaled(x, 1.0 / norm)])[0] if norm > 1 and d > 1 else x
    lay = _Layout()
    _power_masks(lay, d, tuple(x.shape))
    g = lay.build(ops) if d >= 2 else None
    p = _powers(g, base, d)
    return _poly_sum(ops, x, p, coeffs, norm if base is not x else 1.0)


def rsqrt(ops: Backend, x: Value, plan: RsqrtPlan, scale: float = 1.0) -> Value:
    """scale/√x for x in the plan's calibrated range [lo, hi] (a public `scale`).

    x' = c·x (public c), a fitted polynomial start, then Newton steps with per-step
    public constants y ← y·(a − b·x'·y²); the public rescale by √c (and `scale`) is
    folded into the last step's constants.
    Cost: `plan.rounds()` rounds under local truncation (`plan.rounds_exact()` with
    exact truncation), 8·`plan.openings()` bytes per element and party.
    """
    if isinstance(plan, RsqrtProbe):
        y = plan.apply(ops, x)
        return y if scale == 1.0 else ops.mul_public(y, scale)
    return _rsqrt_core(ops, x, plan, None, scale=plan.out_scale * scale)


def _rsqrt_core(
    ops: Backend,
    x: Value,
    plan: RsqrtPlan,
    finish: str | None,
    raw: bool = False,
    scale: float = 1.0,
) -> Value:
    """The plan's iteration on x' = c·x, in one `Group`; returns y ≈ 1/√x', or with
    `finish` = "square" y², with "sqrt" x'·y = √x' (one more opening: y's).

    Each Newton step opens y (→ y² and x'·y, x' itself opened with the first step),
    then x'·y and y² (→ t = x'·y³): 3 openings and 2 rounds per step (+2 for the
    exact truncations). `raw`: the finishing product before its truncation (`Raw`).
    `scale` (no `finish` only): a public factor folded into the last step's constants.
    x' and the powers' base x'/norm are both taken from x, in one truncation round."""
    d, steps = plan.degree(), plan.steps
    norm = max(1.0, plan.hi * plan.in_scale)
    if norm > 1 and d > 1:
        xs, base = ops.trunc_many(
            [ops.scaled(x, plan.in_scale), ops.scaled(x, plan.in_scale / norm)]
        )
    else:
        xs = base = ops.trunc_many([ops.scaled(x, plan.in_scale)])[0]
    shape = tuple(xs.shape)
    if finish is not None and scale != 1.0:
        raise ValueError("scale applies to the plain iteration only")
    coeffs = plan.poly if steps else tuple(c * scale for c in plan.poly)
    lay = _Layout()
    _power_masks(lay, d, shape)
    # x' needs its own mask unless the powers were taken of x' itself.
    xname = "u" if d >= 2 and base is xs else "x"
    need_x = bool(steps) or finish == "sqrt"
    if need_x and xname == "x":
        lay.mask("x", shape)
    for j in range(len(steps)):
        for name in (f"y{j}", f"h{j}", f"k{j}"):
            lay.mask(name, shape)
        lay.pair(f"y{j}", f"y{j}")
        lay.pair(xname, f"y{j}")
        lay.pair(f"h{j}", f"k{j}")
    if finish is not None:
        lay.mask("f", shape)
        lay.pair(xname, "f") if finish == "sqrt" else lay.pair("f", "f")
    g = lay.build(ops) if lay.shapes else None
    y = _poly_sum(ops, xs, _powers(g, base, d), coeffs, norm if base is not xs else 1.0)
    x_open = xname == "u" and d >= 2
    for j, (a, b) in enumerate(steps):
        assert g is not None
        if j == len(steps) - 1:
            a, b = a * scale, b * scale
        g.open(**{f"y{j}": y}, **({} if x_open else {xname: xs}))
        x_open = True
        # y² and x'·y truncated together; then a·y − b·t as one raw sum (b·t straight
        # from the raw product h·k): one truncation instead of three
        y2, xy = ops.trunc_many([g.mul_raw(f"y{j}", f"y{j}"), g.mul_raw(xname, f"y{j}")])
        g.open(**{f"h{j}": xy, f"k{j}": y2})
        tb = ops.scaled(g.mul_raw(f"h{j}", f"k{j}"), b)
        (y,) = ops.trunc_many([ops.raw_sum([(ops.scaled(y, a), 1), (tb, -1)])])
    if finish is None:
        return y
    assert g is not None
    g.open(f=y, **({} if x_open or finish != "sqrt" else {xname: xs}))
    out = g.mul_raw(xname, "f") if finish == "sqrt" else g.mul_raw("f", "f")
    return out if raw else ops.trunc_many([out])[0]


class RsqrtProbe:
    """Stands in for a plan during calibration: records the input of its site and
    returns the exact 1/√x (plain float back-end only)."""

    def __init__(self, name: str, record: Callable[[str, Value], None]) -> None:
        self.name = name
        self.record = record

    def apply(self, ops: Backend, x: Value) -> Value:
        self.record(self.name, x)
        return x.clamp_min(1e-30).rsqrt()


class SoftmaxProbe:
    """Stands in for an exp-softmax site during calibration: exact float softmax."""

    def apply(self, ops: Backend, scores: Value, keep: NDArray | None) -> Value:
        import torch

        if keep is None:
            return torch.softmax(scores, dim=-1)
        k = torch.as_tensor(np.broadcast_to(keep, tuple(scores.shape)).copy())
        return torch.softmax(scores.masked_fill(k == 0, -torch.inf), dim=-1)


def reciprocal(ops: Backend, x: Value, plan: RsqrtPlan) -> Value:
    """1/x = rsqrt(x)² for x > 0 in the plan's range. Cost: rsqrt + 1 round, 1 opening."""
    if isinstance(plan, RsqrtProbe):
        return ops.square(plan.apply(ops, x))
    core = _rsqrt_core(ops, x, plan, "square", raw=True)
    return ops.trunc_many([ops.scaled(core, plan.out_scale**2)])[0]


def sqrt(ops: Backend, z: Value, plan: RsqrtPlan) -> Value:
    """√z = √(z')/√c with √(z') = z'·y, z' = c·z: the product comes from z' and y
    already open in the iteration (z' of order 1: full precision).
    Cost: rsqrt + 1 round, 1 opening."""
    if isinstance(plan, RsqrtProbe):
        return ops.mul(z, plan.apply(ops, z))
    core = _rsqrt_core(ops, z, plan, "sqrt", raw=True)
    return ops.trunc_many([ops.scaled(core, 1.0 / plan.out_scale)])[0]


# -- Comet set ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SmuParams:
    """SMU constants: smu(x) = ((1+α)x + √(((1−α)x)² + μ²))/2 (public, per model)."""

    alpha: float
    mu: float


def smu(ops: Backend, x: Value, p: SmuParams, plan: RsqrtPlan, bind: Bind | None = None) -> Value:
    """SMU via one square root. The rsqrt site sees ((1−α)x)² + μ².

    `bind`: x is a linear layer's output laid out as the bind says; then only the
    server sends for the square's opening.
    Cost: 1 (square) + rsqrt + 1 (sqrt product) rounds; openings: 1 + plan's + 1.
    """
    g = ops.group([tuple(x.shape)], [(0, 0)], [bind])
    g.open({0: x})
    # ((1−α)x)² in one truncation from the raw square
    (sq,) = ops.trunc_many([ops.scaled(g.mul_raw(0, 0), (1.0 - p.alpha) ** 2)])
    z = ops.add_public(sq, p.mu**2)
    if isinstance(plan, RsqrtProbe):
        root = sqrt(ops, z, plan)
        return ops.mul_public(ops.mul_public(x, 1.0 + p.alpha) + root, 0.5)
    # (1+α)x/2 + √z/2: both halves truncated in one round, √z's from the raw z'·y
    core = _rsqrt_core(ops, z, plan, "sqrt", raw=True)
    lin, half_root = ops.scaled(x, 0.5 * (1.0 + p.alpha)), ops.scaled(core, 0.5 / plan.out_scale)
    return ops.trunc_many([ops.raw_sum([(lin, 1), (half_root, 1)])])[0]


def relu_softmax(
    ops: Backend,
    scores: Value,
    keep: NDArray | None,
    mu: float,
    eps: float,
    relu_plan: RsqrtPlan,
    sum_plan: RsqrtPlan,
) -> Value:
    """ReLU-softmax over the last axis: r / (Σr + eps), r = smu(scores; 0, μ)·keep.

    `keep` is the public 0/1 padding mask (broadcastable). The division is rsqrt(·)².
    Cost: smu + rsqrt(sum) + 2 rounds; the final product opens r and the per-row
    1/Σ (8 bytes per score, not 16).
    """
    r, inv = relu_softmax_parts(ops, scores, keep, mu, eps, relu_plan, sum_plan)
    return mul_broadcast(ops, r, inv)


@dataclass(frozen=True)
class SecretMask:
    """A padding mask held as shares (`--hide-lengths`): applying it costs one product
    per element instead of a free public product, and the server learns only the
    padded shape."""

    value: Any


def apply_keep(ops: Backend, x: Value, keep: NDArray | SecretMask | None) -> Value:
    """x with padded key positions zeroed: a public 0/1 mask (free) or a `SecretMask`
    (one Beaver product per element of x; the mask broadcasts against x)."""
    if keep is None:
        return x
    if isinstance(keep, SecretMask):
        return ops.mul(x, ops.broadcast(keep.value, tuple(x.shape)))
    return ops.mul_public(x, np.broadcast_to(keep, tuple(x.shape)))


def relu_softmax_parts(
    ops: Backend,
    scores: Value,
    keep: NDArray | None,
    mu: float,
    eps: float,
    relu_plan: RsqrtPlan,
    sum_plan: RsqrtPlan,
) -> tuple[Value, Value]:
    """(r, 1/(Σr + eps)) of `relu_softmax` without the final product: attention
    multiplies the per-row factor into (r·V), which has dh columns instead of L."""
    r = apply_keep(ops, smu(ops, scores, SmuParams(0.0, mu), relu_plan), keep)
    s = ops.add_public(ops.sum(r, axis=-1, keepdims=True), eps)
    return r, reciprocal(ops, s, sum_plan)


def square(ops: Backend, x: Value, bind: Bind | None = None) -> Value:
    """x² from one opening of x (sent by the server only if x is bound). 1 round."""
    g = ops.group([tuple(x.shape)], [(0, 0)], [bind])
    g.open({0: x})
    return g.mul(0, 0)


def mul_broadcast(ops: Backend, x: Value, y: Value) -> Value:
    """x·y where y broadcasts against x (a per-row factor, a weight vector): both are
    opened once with their own shapes, so y's elements are sent once, not once per
    element of x. Cost: 1 round; 8·(|x| + |y|) bytes per party."""
    g = ops.group([tuple(x.shape), tuple(y.shape)], [(0, 1)])
    g.open({0: x, 1: y})
    return g.mul(0, 1)


def algebraic_tanh(ops: Backend, x: Value, plan: RsqrtPlan) -> Value:
    """x/√(1+x²) (the Comet form's pooler activation). Cost: rsqrt + 2 rounds."""
    r = rsqrt(ops, ops.add_public(ops.square(x), 1.0), plan)
    return ops.mul(x, r)


# -- shared by both sets ---------------------------------------------------------------------
@dataclass(frozen=True)
class LayerNormSite:
    """Public constants of one LayerNorm: input pre-scale s (var·s² is centred on 1
    over the calibrated range, for fixed-point precision), eps, and the rsqrt plan
    for var·s² + eps·s²."""

    scale: float
    eps: float
    plan: RsqrtPlan


def _mean_raw(ops: Backend, sq: Raw) -> Raw:
    """The mean over the last axis of raw products, still raw (one truncation later)."""
    total = Raw(ops.sum(sq.value, axis=-1, keepdims=True), sq.bits)
    return ops.scaled(total, 1.0 / sq.value.shape[-1])


def layernorm(ops: Backend, x: Value, gamma: Value, beta: Value, site: LayerNormSite) -> Value:
    """LayerNorm over the last axis with private γ, β (shares; server-held weights).

    LN is invariant to a public pre-scale s except for eps, which becomes eps·s².
    Cost: 1 round (x' and γ opened once give x'² and x'·γ) + rsqrt + 1 round (x'·γ
    and the per-row 1/σ opened); 8 bytes per element and party for each of the two
    openings, plus the rows' rsqrt.
    """
    shape = tuple(x.shape)
    # s·(x − mean x) = s·x − (s/d)·Σx, one raw difference truncated once
    n = shape[-1]
    sx = ops.scaled(x, site.scale)
    smean = ops.scaled(ops.sum(x, axis=-1, keepdims=True), site.scale / n)
    (xs,) = ops.trunc_many([ops.raw_sum([(sx, 1), (smean, -1)])])
    g = ops.group([shape, tuple(gamma.shape)], [(0, 0), (0, 1)])
    g.open({0: xs, 1: gamma})
    # the variance from the raw squares' sum (one truncation), with x'·γ in that round
    xg, msq = ops.trunc_many([g.mul_raw(0, 1), _mean_raw(ops, g.mul_raw(0, 0))])
    var = ops.add_public(msq, site.eps * site.scale**2)
    r = rsqrt(ops, var, site.plan)
    return mul_broadcast(ops, xg, r) + ops.broadcast(beta, shape)


def rmsnorm(ops: Backend, x: Value, gamma: Value, site: LayerNormSite) -> Value:
    """RMSNorm over the last axis, x·γ/√(mean(x²) + eps), with private γ (shares).

    The same single rsqrt as `layernorm` without the centring and without β; the
    site's public pre-scale s works the same way (eps becomes eps·s²).
    Cost: as `layernorm` — 1 round (x' and γ opened once give x'² and x'·γ) + rsqrt
    + 1 round (x'·γ and the per-row factor opened).
    """
    shape = tuple(x.shape)
    xs = ops.mul_public(x, site.scale)
    g = ops.group([shape, tuple(gamma.shape)], [(0, 0), (0, 1)])
    g.open({0: xs, 1: gamma})
    xg, msq = ops.trunc_many([g.mul_raw(0, 1), _mean_raw(ops, g.mul_raw(0, 0))])
    ms = ops.add_public(msq, site.eps * site.scale**2)
    r = rsqrt(ops, ms, site.plan)
    return mul_broadcast(ops, xg, r)


# -- reference set -------------------------------------------------------------------------
@dataclass(frozen=True)
class OddFormParams:
    """f(x) = z·q(z²), z = x·rsqrt(x² + p): the reference set's bounded odd functions."""

    p: float
    q: tuple[float, ...]


def odd_form(ops: Backend, x: Value, form: OddFormParams, plan: RsqrtPlan) -> Value:
    """z·q(z²) with z = x·rsqrt(x²+p). Cost: rsqrt + 2 + (poly in z²) rounds."""
    g = ops.group([tuple(x.shape)] * 2, [(0, 0), (0, 1)])
    g.open({0: x})
    return _odd_form_open(ops, g, form, plan)


def _odd_form_open(ops: Backend, g: Group, form: OddFormParams, plan: RsqrtPlan) -> Value:
    """`odd_form` of value 0 of `g` (open; products (0, 0) and (0, 1) planned): the
    rsqrt is opened as value 1. z is opened once for z² and z·q(z²)."""
    r = rsqrt(ops, ops.add_public(g.mul(0, 0), form.p), plan)
    g.open({1: r})
    z = g.mul(0, 1)
    if len(form.q) == 1:
        return ops.mul_public(z, form.q[0])
    gz = ops.group([tuple(z.shape)] * 2, [(0, 0), (0, 1)])
    gz.open({0: z})
    gz.open({1: poly(ops, gz.mul(0, 0), form.q)})
    return gz.mul(0, 1)


def gelu_reference(
    ops: Backend, x: Value, form: OddFormParams, plan: RsqrtPlan, bind: Bind | None = None
) -> Value:
    """GeLU ≈ x/2·(1 + z·q(z²)) for unmodified checkpoints. x is opened once (by the
    server alone when bound) for x², x·rsqrt and x·(z·q(z²)).
    Cost: odd_form + 1 round."""
    g = ops.group([tuple(x.shape)] * 3, [(0, 0), (0, 1), (0, 2)], [bind, None, None])
    g.open({0: x})
    g.open({2: _odd_form_open(ops, g, form, plan)})
    return ops.mul_public(x + g.mul(0, 2), 0.5)


@dataclass(frozen=True)
class ExpSoftmaxSite:
    """Public constants of the reference softmax at one site (see `exp_softmax_site`)."""

    bound: float  # B ≥ the logits (calibrated)
    k: int  # K = 2^k: u = exp((x − B)/K), then k normalised squarings
    m: int  # exp((x−B)/K) as (1 + t + t²/2 + t³/6)^(2^m), t = (x−B)/(K·2^m)
    pre_scale: float  # σ: lifts the smallest row maximum of u before squaring
    target: float  # c: every normalisation brings Σv² to ≈ c
    first_plan: RsqrtPlan  # rough rsqrt of Σ(σu)²
    stage_plan: RsqrtPlan  # rough rsqrt of Σv² after a squaring
    final_plan: RsqrtPlan  # accurate rsqrt of the final row sum (≈ c)


STAGE_REL_ERR = 0.25  # a normalisation only has to keep the row in range
STAGE_BAND = (1 - STAGE_REL_ERR) ** 2, (1 + STAGE_REL_ERR) ** 2


def exp_softmax_site(
    bound: float, gap: float, span: float, n_max: int, rel_err: float = 2.0**-12
) -> ExpSoftmaxSite:
    """Constants for `exp_softmax` from calibrated logit statistics.

    bound: B; gap: how far below B a row's maximum may lie; span: B − (lowest logit);
    n_max: longest row. K is the smallest power of two with gap/K ≤ 4.5, so that a
    row's largest u = exp((x−B)/K) is ≥ e^-4.5 and, scaled by σ, squares without
    underflow or overflow. Every later range is known analytically.
    """
    k = max(1, math.ceil(math.log2(max(gap / 4.5, 1.0))))
    kk = 2**k
    m = exp_m_for(span, k)
    pre = 2.0**-3 * math.exp(gap / kk)
    target = 8.0
    lo_u, hi_u = math.exp(-gap / kk), math.exp(2.0 / kk)  # logits may exceed B a little
    # One value per row at all three: the fewest rounds.
    r = "rounds"
    first = plan_rsqrt(
        (pre * lo_u) ** 2 / 2, n_max * (pre * hi_u) ** 2 * 2, STAGE_REL_ERR, prefer=r
    )
    lo_b, hi_b = STAGE_BAND
    stage = plan_rsqrt(
        (lo_b * target) ** 2 / n_max / 2, (hi_b * target) ** 2 * 2, STAGE_REL_ERR, prefer=r
    )
    final = plan_rsqrt(lo_b * target / 1.5, hi_b * target * 1.5, rel_err, prefer=r)
    return ExpSoftmaxSite(bound, k, m, pre, target, first, stage, final)


def exp_softmax(ops: Backend, scores: Value, keep: NDArray | None, site: ExpSoftmaxSite) -> Value:
    """softmax over the last axis without a maximum (no comparison, no look-up table).

    exp(x−B) underflows fixed point when a row's maximum lies far below the public
    bound, so the exponent is split: u = exp((x−B)/K) keeps resolution; then k times
    "square, then rescale the row so that Σv² ≈ c" (a rough rsqrt suffices: any row
    scale cancels in the end), and a final division by the row sum, which is ≈ c and so
    needs only a narrow, accurate reciprocal. Exact up to the exp error (see
    `exp_m_for`) and the rsqrt errors.
    Cost: m + 4 + first + k·(2 + stage) + final + 2 rounds.
    """
    if isinstance(site, SoftmaxProbe):
        return site.apply(ops, scores, keep)
    v, inv = exp_softmax_parts(ops, scores, keep, site)
    return mul_broadcast(ops, v, inv)


def exp_softmax_parts(
    ops: Backend, scores: Value, keep: NDArray | None, site: ExpSoftmaxSite
) -> tuple[Value, Value]:
    """(v, 1/Σv) of `exp_softmax` without the final product (see `relu_softmax_parts`)."""
    kk = 2**site.k
    t = ops.mul_public(ops.add_public(scores, -site.bound), 1.0 / (kk * 2**site.m))
    # Base 1 + t + t²/2 + t³/6: exponent error 2^m·t⁴/24 instead of 2^m·t²/2, so m
    # stays small and the base's rounding is amplified less by the squarings.
    t2 = ops.square(t)
    # t³/6 from the raw product t²·t, truncated once, with t²/2 in the same round
    t3_6, t2_2 = ops.scaled(ops.mul_raw(t2, t), 1.0 / 6.0), ops.scaled(t2, 0.5)
    (high,) = ops.trunc_many([ops.raw_sum([(t3_6, 1), (t2_2, 1)])])
    u = ops.add_public(t + high, 1.0)
    for _ in range(site.m):
        u = ops.square(u)
    u = apply_keep(ops, u, keep)
    root_c = math.sqrt(site.target)
    s = ops.sum(ops.square(ops.mul_public(u, site.pre_scale)), axis=-1, keepdims=True)
    r = rsqrt(ops, s, site.first_plan, site.pre_scale * root_c)
    v = mul_broadcast(ops, u, r)
    for j in range(site.k):
        v = ops.square(v)
        if j < site.k - 1:
            s = ops.sum(ops.square(v), axis=-1, keepdims=True)
            r = rsqrt(ops, s, site.stage_plan, root_c)
            v = mul_broadcast(ops, v, r)
    den = ops.sum(v, axis=-1, keepdims=True)
    return v, reciprocal(ops, den, site.final_plan)


def exp_m_for(span: float, k: int) -> int:
    """Squarings m for exp(y), y = (x−B)/2^k ≥ −span/2^k, as (1+t+t²/2+t³/6)^(2^m), t = y/2^m.

    |t| ≤ 1/2 keeps the base ≥ 0.6; the error of log u is 2^m·t⁴/24, which the later
    2^k power multiplies: relative to a neighbour one nat away the error is ≈ |t|³/6
    (≤ 2% at the far end of the range, ≤ 0.3% for |t| ≤ 1/4). Larger m would amplify
    the base's fixed-point rounding by 2^m.
    """
    return max(3, math.ceil(math.log2(max(span / 2**k, 1.0))) + 1)


def crypten_rsqrt(ops: Backend, x: Value, steps: int = 3) -> Value:
    """CrypTen 0.4's inv_sqrt, for comparison only: y0 = 2.2·exp(−(x/2 + 0.2)) + 0.2 −
    x/1024 with exp(z) = (1 + z/256)^256, then y ← y·(3 − x·y²)/2.

    Range-agnostic: on wide ranges it is inaccurate or diverges (docs/ACCURACY.md).
    Cost: 8 + 3·steps rounds.
    """
    z = ops.add_public(ops.mul_public(x, -0.5 / 256), 1.0 - 0.2 / 256)
    for _ in range(8):
        z = ops.square(z)
    y = ops.add_public(ops.mul_public(z, 2.2) - ops.mul_public(x, 1.0 / 1024), 0.2)
    for _ in range(steps):
        y2 = ops.square(y)
        xy2 = ops.mul(x, y2)
        y = ops.mul_public(ops.mul(y, ops.add_public(ops.mul_public(xy2, -1.0), 3.0)), 0.5)
    return y
