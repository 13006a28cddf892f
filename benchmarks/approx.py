"""`comet-bench approx`: cost and error of each non-linear function, both sets.

Each row runs one function as its own two-party program (both parties in one
process, in-process channel): the client shares the input, the function runs under
`scope(op="bench")`, the output is opened to the client. Online figures are read from
that label only (bytes: both parties' sent payload; rounds: max of the two); offline
figures are the whole offline phase of the row (HE unless `--provider`).

Inputs span the ranges measured on all-MiniLM-L6-v2 (see docs/ACCURACY.md): GeLU
inputs −17…25, attention logits over a ~60 spread with row maxima up to 30 below the
top, LayerNorm variances 0.003…130. Each site's plan is fitted to the input's range
widened by 2 on each side, as calibration does. Errors are against the exact float
function the row approximates: Comet rows against the Comet function (SMU,
ReLU-softmax — what an adapted model was trained with), reference rows against the
original (erf GeLU, softmax). max_rel_err divides by max(|exact|, 1e-2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import erf

from common.approx import exact
from common.approx import functions as F
from common.approx.backend import SharedBackend
from common.approx.forms import GELU_REF
from common.approx.rsqrt_fit import plan_rsqrt
from common.mpc.engine import Mpc
from common.mpc.preprocessing import make_provider, plan_program
from common.mpc.roles import CLIENT
from common.protocol.calibrate import SMU_REL_ERR
from common.transport import Channel, run_local

SEED = 20241124
SMU_DEFAULT = F.SmuParams(0.0, 1 / math.sqrt(2))  # the paper's start (α=0, μ=1/√2)


@dataclass
class Row:
    set: str
    fn: str
    shape: str
    online_bytes: int
    offline_bytes: int
    rounds: int
    online_s: float
    offline_s: float
    triples: int
    squares: int
    group_masks: int  # elements of open-once masks (`OpenedGroup`)
    max_abs_err: float
    max_rel_err: float


@dataclass(frozen=True)
class Case:
    set: str
    fn: str
    make: Callable[[np.random.Generator, bool], tuple[np.ndarray, Callable, np.ndarray]]


def _plan(z: np.ndarray, rel_err: float = 2.0**-12):
    return plan_rsqrt(float(z.min()) / 2, float(z.max()) * 2, rel_err=rel_err)


def _rsqrt_input(rng: np.random.Generator, quick: bool) -> np.ndarray:
    shape = (16, 256) if quick else (128, 1536)
    return np.exp(rng.uniform(math.log(0.5), math.log(1222.0), shape))


def _rsqrt_comet(rng, quick):
    x = _rsqrt_input(rng, quick)
    plan = _plan(x)
    return x, (lambda ops, v: F.rsqrt(ops, v, plan)), 1 / np.sqrt(x)


def _rsqrt_crypten(rng, quick):
    x = _rsqrt_input(rng, quick)
    return x, (lambda ops, v: F.crypten_rsqrt(ops, v)), 1 / np.sqrt(x)


def _gelu_input(rng, quick):
    shape = (16, 512) if quick else (128, 1536)
    x = rng.normal(0, 2.0, shape)
    x.flat[:2] = (-17.0, 25.0)  # the calibrated extremes
    return np.clip(x, -17.0, 25.0)


def _gelu_comet(rng, quick):
    x = _gelu_input(rng, quick)
    p = SMU_DEFAULT
    plan = _plan(((1 - p.alpha) * x) ** 2 + p.mu**2, SMU_REL_ERR)
    want = exact.smu(torch.tensor(x), p.alpha, p.mu).numpy()
    return x, (lambda ops, v: F.smu(ops, v, p, plan)), want


def _gelu_reference(rng, quick):
    x = _gelu_input(rng, quick)
    form = F.OddFormParams(float(GELU_REF.p), tuple(float(c) for c in GELU_REF.q))
    plan = _plan(x**2 + form.p)
    want = x / 2 * (1 + erf(x / math.sqrt(2)))
    return x, (lambda ops, v: F.gelu_reference(ops, v, form, plan)), want


def _logits(rng, quick):
    shape = (2, 32, 32) if quick else (12, 128, 128)
    x = rng.normal(0, 4.0, shape)
    x += rng.uniform(-30, 0, (*shape[:-1], 1))  # rows far below the top
    return x


def _softmax_comet(rng, quick):
    x = _logits(rng, quick)
    mu, eps = 0.5, 1.0
    relu_plan = _plan(x**2 + mu**2, SMU_REL_ERR)
    r = exact.smu(torch.tensor(x), 0.0, mu).numpy()
    sum_plan = _plan(r.sum(-1) + eps)
    want = exact.relu_softmax(torch.tensor(x), None, mu, eps).numpy()
    return x, (lambda ops, v: F.relu_softmax(ops, v, None, mu, eps, relu_plan, sum_plan)), want


def _softmax_reference(rng, quick):
    x = _logits(rng, quick)
    bound = float(x.max())
    gap = (bound - float(x.max(-1).min())) * 2
    site = F.exp_softmax_site(bound, gap, (bound - float(x.min())) * 2, x.shape[-1])
    want = torch.softmax(torch.tensor(x), -1).numpy()
    return x, (lambda ops, v: F.exp_softmax(ops, v, None, site)), want


def _layernorm(rng, quick):
    rows, d = (16, 128) if quick else (128, 768)
    var = np.exp(rng.uniform(math.log(0.1), math.log(130.0), rows))
    x = rng.normal(0, 1, (rows, d)) * np.sqrt(var)[:, None] + rng.normal(0, 1, (rows, 1))
    g, b = rng.normal(1, 0.1, d), rng.normal(0, 0.1, d)
    v = x.var(-1)
    s = 1 / math.sqrt(math.sqrt(v.min() * v.max()))
    site = F.LayerNormSite(s, 1e-12, _plan(v * s * s))
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(v + 1e-12)[:, None] * g + b

    def fn(ops, val):
        gamma = ops.server_constant(g if ops.party == 0 else None, (d,))
        beta = ops.server_constant(b if ops.party == 0 else None, (d,))
        return F.layernorm(ops, val, gamma, beta, site)

    return x, fn, want


CASES = [
    Case("comet", "rsqrt", _rsqrt_comet),
    Case("reference", "rsqrt", _rsqrt_crypten),
    Case("comet", "gelu", _gelu_comet),
    Case("reference", "gelu", _gelu_reference),
    Case("comet", "softmax", _softmax_comet),
    Case("reference", "softmax", _softmax_reference),
    Case("comet", "layernorm", _layernorm),
    Case("reference", "layernorm", _layernorm),
]


def run_case(case: Case, quick: bool, provider: str, seed: int = SEED) -> Row:
    """Run one row (both parties in this process)."""
    rng = np.random.default_rng(seed)
    x, fn, want = case.make(rng, quick)

    def program(mpc: Mpc, data: Any) -> Any:
        ops = SharedBackend(mpc)
        v = ops.input(CLIENT, data, x.shape)
        with mpc.ch.scope(op="bench"):
            y = fn(ops, v)
        return ops.output(y, to=CLIENT)

    def body(ch: Channel, data: Any) -> Any:
        plan, weights = plan_program(lambda m: program(m, data), ch.party)
        prov = make_provider(provider)
        prov.setup(ch)
        pool = prov.generate(ch, plan, weights)
        with ch.scope(phase="online"):
            out = program(Mpc(ch, pool), data)
        return out, ch.meter, plan

    (_, m0, plan), (out, m1, _) = run_local(body, (None,), (x,))
    on = [m.breakdown(by=("phase", "op")).get(("online", "bench")) for m in (m0, m1)]
    off = [m.totals(phase="offline") for m in (m0, m1)]
    err = np.abs(out - want)
    return Row(
        set=case.set,
        fn=case.fn,
        shape="×".join(map(str, x.shape)),
        online_bytes=int(on[0].sent_bytes + on[1].sent_bytes),
        offline_bytes=int(off[0].sent_bytes + off[1].sent_bytes),
        rounds=int(max(on[0].rounds, on[1].rounds)),
        online_s=float(max(on[0].seconds, on[1].seconds)),
        offline_s=float(max(off[0].seconds, off[1].seconds)),
        triples=plan.triples,
        squares=plan.squares,
        group_masks=sum(g.elements()[0] for g in plan.groups),
        max_abs_err=float(err.max()),
        max_rel_err=float((err / np.maximum(np.abs(want), 1e-2)).max()),
    )


def run_approx(
    quick: bool,
    provider: str = "he",
    only: tuple[str, ...] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    rows = []
    for case in CASES:
        if only and case.fn not in only:
            continue
        if progress:
            progress(f"{case.set} {case.fn} …")
        rows.append(asdict(run_case(case, quick, provider)))
    return {"meta": {"mode": "quick" if quick else "full", "provider": provider}, "approx": rows}
