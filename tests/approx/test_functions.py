"""The non-linear functions against float references, on the three back-ends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.approx import exact
from common.approx import functions as F
from common.approx.backend import PlainBackend, SharedBackend
from common.approx.forms import GELU_REF, TANH_REF
from common.approx.rsqrt_fit import plan_rsqrt
from common.mpc.engine import Mpc
from common.mpc.preprocessing import InsecureDealer, plan_program
from common.mpc.ring import FRAC_BITS
from common.mpc.roles import CLIENT
from common.prg import SecureRng
from common.transport import run_local

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def shared_run(fn, x: np.ndarray, extra=None):
    """Run fn(ops, value) privately (client owns x); returns (output, client meter)."""

    def program(mpc: Mpc, data):
        ops = SharedBackend(mpc)
        v = ops.input(CLIENT, data, x.shape)
        return ops.output(fn(ops, v), to=CLIENT)

    def body(ch, data):
        plan, w = plan_program(lambda m: program(m, data), ch.party)
        prov = InsecureDealer(SecureRng(7))
        prov.setup(ch)
        pool = prov.generate(ch, plan, w)
        with ch.scope(phase="online"):
            out = program(Mpc(ch, pool), data)
        return out, ch.meter

    (_, _), (out, meter) = run_local(body, (None,), (x,))
    return out, meter


def plain(fn, x: np.ndarray, bits: int | None) -> np.ndarray:
    ops = PlainBackend(bits)
    return ops.output(fn(ops, ops.input(CLIENT, x, x.shape)))


RANGES = [(0.05, 5.0), (0.5, 1222.0), (1.0, 5760.0)]


@pytest.mark.parametrize("lo,hi", RANGES)
def test_rsqrt_three_backends(lo: float, hi: float) -> None:
    plan = plan_rsqrt(lo, hi)
    x = np.geomspace(lo, hi, 400)
    want = 1 / np.sqrt(x)

    def fn(ops, v):
        return F.rsqrt(ops, v, plan)

    flt = plain(fn, x, None)
    assert np.max(np.abs(flt / want - 1)) <= plan.max_rel_err * 1.01 + 1e-12
    fix = plain(fn, x, FRAC_BITS)
    shared, meter = shared_run(fn, x)
    # Fixed point: a few units in the last place of y' (of order 1) on top of the plan.
    tol = plan.max_rel_err + 64 * 2.0**-FRAC_BITS / min(want * math.sqrt(math.sqrt(lo * hi)))
    assert np.max(np.abs(fix / want - 1)) < tol
    assert np.max(np.abs(shared / want - 1)) < tol
    # The protocol is the emulation up to local-truncation noise.
    assert np.max(np.abs(shared - fix) / want) < 64 * 2.0**-FRAC_BITS * 8
    online = meter.totals(phase="online")
    # + opening the output (sharing the input overlaps with the first exchange)
    assert online.rounds == plan.rounds_exact() + 1
    # Bytes: the client shares x (8n), then 8n per opening the plan counts.
    # 8 bytes per opened element (and the input), plus one bit per exact truncation:
    # x' and the base, the opened square, the polynomial's terms, 4 per Newton step
    n, d, steps = x.size, plan.degree(), len(plan.steps)
    opened = 8 * n * (1 + plan.openings())
    assert opened < online.sent_bytes <= opened + n * (3 + d + 4 * steps) // 8 + online.rounds


def test_smu_and_relu_softmax_match_exact() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-25, 25, 201), rng.normal(0, 3, 200)])
    p = F.SmuParams(0.1, 0.7)
    z = ((1 - p.alpha) * x) ** 2 + p.mu**2
    plan = plan_rsqrt(z.min() / 2, z.max() * 2)
    got = plain(lambda ops, v: F.smu(ops, v, p, plan), x, FRAC_BITS)
    want = exact.smu(torch.tensor(x), p.alpha, p.mu).numpy()
    assert np.max(np.abs(got - want)) < 2e-3 * 2.0 ** (16 - FRAC_BITS) + 25 * plan.max_rel_err

    scores = rng.normal(0, 6, (3, 16))
    keep = np.ones((3, 16))
    keep[1, 10:] = 0
    mu, eps = 0.5, 1.0
    zr = scores**2 + mu**2
    relu_plan = plan_rsqrt(zr.min() / 2, zr.max() * 2)
    r = exact.smu(torch.tensor(scores), 0.0, mu).numpy() * keep
    sums = r.sum(-1) + eps
    sum_plan = plan_rsqrt(sums.min() / 2, sums.max() * 2)

    def sm(ops, v):
        return F.relu_softmax(ops, v, keep, mu, eps, relu_plan, sum_plan)

    want = exact.relu_softmax(torch.tensor(scores), torch.tensor(keep), mu, eps).numpy()
    for got in (plain(sm, scores, FRAC_BITS), shared_run(sm, scores)[0]):
        assert np.max(np.abs(got - want)) < 3e-3
        assert np.all(got[1, 10:] == 0)


def test_layernorm_over_wide_variance_range() -> None:
    rng = np.random.default_rng(1)
    # Rows with variance from 0.05 to 130: MiniLM's LayerNorms see 0.16 to 127 (the
    # brief), with margin below. At f = 13 a row of variance 0.003 would lose ~5% (its
    # centred values keep only a few hundred units of 2^-f); see docs/ACCURACY.md.
    scales = np.geomspace(0.05, 130, 12) ** 0.5
    x = rng.normal(0, 1, (12, 64)) * scales[:, None] + rng.normal(0, 1, (12, 1))
    g, b = rng.normal(1, 0.1, 64), rng.normal(0, 0.1, 64)
    var = x.var(-1)
    eps = 1e-12
    s = 1 / math.sqrt(math.sqrt(var.min() * var.max()))
    site = F.LayerNormSite(s, eps, plan_rsqrt(var.min() * s * s / 2, var.max() * s * s * 2))
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(var + eps)[:, None] * g + b

    def fn(ops, v):
        return F.layernorm(
            ops, v, ops.server_constant(g, (64,)), ops.server_constant(b, (64,)), site
        )

    tol = 5e-3 * 2.0 ** (16 - FRAC_BITS)  # a fixed number of units of 2^-f
    for got in (plain(fn, x, None), plain(fn, x, FRAC_BITS)):
        assert np.max(np.abs(got - want)) < tol
    got, _ = shared_run(fn, x)
    assert np.max(np.abs(got - want)) < tol


def test_reference_gelu_and_tanh() -> None:
    from scipy.special import erf

    x = np.linspace(-25, 25, 1001)
    want = x / 2 * (1 + erf(x / math.sqrt(2)))
    form = F.OddFormParams(GELU_REF.p, tuple(GELU_REF.q))
    z = x**2 + form.p
    plan = plan_rsqrt(z.min() / 2, z.max() * 2)
    got = plain(lambda ops, v: F.gelu_reference(ops, v, form, plan), x, FRAC_BITS)
    assert np.max(np.abs(got - want)) < GELU_REF.max_abs_err + 0.01

    tform = F.OddFormParams(TANH_REF.p, tuple(TANH_REF.q))
    zt = x**2 + tform.p
    tplan = plan_rsqrt(zt.min() / 2, zt.max() * 2)
    got = plain(lambda ops, v: F.odd_form(ops, v, tform, tplan), x, FRAC_BITS)
    assert np.max(np.abs(got - np.tanh(x))) < TANH_REF.max_abs_err + 0.005


def test_exp_softmax_rows_far_below_the_bound() -> None:
    rng = np.random.default_rng(2)
    # Row maxima spread over 30 below the bound: plain exp(x − B) would underflow.
    scores = rng.normal(0, 3, (6, 32)) + np.linspace(-30, 0, 6)[:, None]
    bound = float(scores.max())
    gap = bound - float(scores.max(-1).min())
    site = F.exp_softmax_site(bound, gap * 1.5, (bound - scores.min()) * 1.5, 64)
    want = torch.softmax(torch.tensor(scores), -1).numpy()

    def fn(ops, val):
        return F.exp_softmax(ops, val, None, site)

    assert np.max(np.abs(plain(fn, scores, None) - want)) < 0.01
    assert np.max(np.abs(plain(fn, scores, FRAC_BITS) - want)) < 0.02
    got, _ = shared_run(fn, scores)
    assert np.max(np.abs(got - want)) < 0.02


def test_rsqrt_keeps_truncated_values_small() -> None:
    # A degree-4 start on a GeLU-like range: powers of x' ≈ 96 would reach 2^26 before
    # truncation; normalised powers keep every truncated value of order 1, so local
    # truncation (failure probability |v|/2^64) stays rare. Measured here as the
    # emulation's expected failures per element over the range.
    plan = plan_rsqrt(0.125, 1150, rel_err=2.0**-14)
    assert plan.degree() >= 3
    x = np.geomspace(0.125, 1150, 2000)
    be = PlainBackend(FRAC_BITS, track_risk=True)
    F.rsqrt(be, be.input(CLIENT, x, x.shape), plan)
    assert be.truncation_risk / x.size < 2.0**-26
