"""Reference-set forms: documented errors, and the constants are what a refit gives."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from common.approx.forms import GELU_REF, TANH_REF, fit_gelu, fit_tanh


def test_documented_errors() -> None:
    x = np.linspace(-30, 30, 120001)
    gelu = x / 2 * (1 + erf(x / math.sqrt(2)))
    assert np.max(np.abs(GELU_REF.evaluate(x) - gelu)) <= GELU_REF.max_abs_err * 1.001
    assert GELU_REF.max_abs_err < 5e-3
    assert np.max(np.abs(TANH_REF.evaluate(x) - np.tanh(x))) <= TANH_REF.max_abs_err * 1.001
    assert TANH_REF.max_abs_err < 5e-3
    # The classic one-parameter form (p ≈ 0.67) is an order of magnitude worse.
    assert fit_gelu(0).max_abs_err > 10 * GELU_REF.max_abs_err


def test_refit_reproduces_constants() -> None:
    g, t = fit_gelu(len(GELU_REF.q) - 1), fit_tanh(len(TANH_REF.q) - 1)
    assert abs(g.max_abs_err - GELU_REF.max_abs_err) < 2e-4
    assert abs(t.max_abs_err - TANH_REF.max_abs_err) < 2e-4


def test_silu_form_fits_and_refits() -> None:
    from common.approx.forms import SILU_REF, fit_silu

    x = np.linspace(-30, 30, 60001)
    silu = x / (1 + np.exp(-x))
    assert np.max(np.abs(SILU_REF.evaluate(x) - silu)) <= SILU_REF.max_abs_err * 1.001
    assert SILU_REF.max_abs_err < 1e-3
    assert abs(fit_silu(len(SILU_REF.q) - 1).max_abs_err - SILU_REF.max_abs_err) < 2e-4
