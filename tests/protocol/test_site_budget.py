"""Per-site accuracy targets: exact input floors, target overrides, the end-to-end search."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from comet_server.adapt.patch import save_comet_model
from common.protocol.calibrate import (
    FLOOR_SLACK,
    SITE_TARGETS_JSON,
    approx_for,
    compile_loaded,
    default_target,
    exact_floor,
    fit_sites,
    read_site_targets,
    record_sites,
)
from common.protocol.card import CompiledModel
from common.protocol.run import plain_forward
from common.protocol.site_budget import LADDER, _exact_outputs, _output_error, choose_targets
from tests.comet_server.test_adapt import _patched_tiny, _Tok
from tests.protocol.test_program import batches

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny_comet(tmp_path_factory):
    model, cfg, params = _patched_tiny()
    d = tmp_path_factory.mktemp("tiny_comet")
    save_comet_model(model, _Tok(), params, d)
    cal = batches(np.random.default_rng(1), 3)
    compiled = compile_loaded(model, cfg, approx_for(d, "comet"), cal, "tiny")
    return compiled, cal, d


def test_smu_sites_start_at_their_exact_floor(tiny_comet) -> None:
    compiled, _, d = tiny_comet
    card = compiled.card
    mu = card.approx.smu.mu
    for name, plan in card.sites.rsqrt.items():
        floor = exact_floor(card, name)
        if name.endswith(".gelu"):
            assert floor == pytest.approx(mu**2)
        if name.endswith(".softmax.relu"):
            assert floor == pytest.approx(card.approx.relu_mu**2)
        if floor is not None:
            # Not lo / MARGIN: the input cannot fall below μ² (or 1 for tanh's 1 + x²).
            seen = card.sites.ranges[name][0]
            assert plan.lo == pytest.approx(min(floor, seen) / (1 + FLOOR_SLACK))
            assert seen >= floor * (1 - 1e-9)
    # The reference set's odd forms see x² + p; LayerNorm variances have no floor.
    ref = dataclasses.replace(card, approx=approx_for(d, "reference"))
    assert exact_floor(ref, "L0.gelu") == ref.approx.gelu_form.p > 0
    assert exact_floor(ref, "L0.softmax.relu") is None
    assert exact_floor(card, "L0.ln1") is None and exact_floor(ref, "L0.ln1") is None


def test_targets_override_the_default_per_site(tiny_comet) -> None:
    compiled, cal, _ = tiny_comet
    card = compiled.card
    rec = record_sites(card, compiled.weights, cal)
    base = fit_sites(card, rec)
    name = "L0.gelu"
    loose = fit_sites(card, rec, {name: LADDER[-1], "L0.ln1": LADDER[-1]})
    assert loose.rsqrt[name].max_rel_err <= LADDER[-1] * 1.01
    assert loose.rsqrt[name].openings() < base.rsqrt[name].openings()
    assert loose.layernorm["L0.ln1"].plan.openings() <= base.layernorm["L0.ln1"].plan.openings()
    # Every other site is fitted exactly as without targets.
    for other in base.rsqrt:
        if other != name:
            assert loose.rsqrt[other] == base.rsqrt[other]
    assert default_target(card, name) < LADDER[-1]
    with pytest.raises(ValueError, match="unknown sites"):
        fit_sites(card, rec, {"L9.gelu": 0.01})


def test_search_keeps_the_end_to_end_error_within_its_budget(tiny_comet) -> None:
    compiled, cal, _ = tiny_comet
    card, w = compiled.card, compiled.weights
    report = choose_targets(card, w, cal)
    assert report.budget == pytest.approx(0.5 * report.fixed_point_error)
    assert report.targets, "the defaults are tighter than this model needs somewhere"
    assert report.bytes_chosen < report.bytes_default
    # Re-measure independently: refit with the chosen targets, run, compare with exact.
    sites = fit_sites(card, record_sites(card, w, cal), report.targets)
    model = CompiledModel(dataclasses.replace(card, sites=sites), w)
    exact = _exact_outputs(card, w, cal)
    err = max(
        _output_error(ref, plain_forward(model, b), b.attention_mask, True)
        for ref, b in zip(exact, cal, strict=True)
    )
    assert err == pytest.approx(report.error, rel=1e-9)
    assert report.default_error <= err <= report.budget


def test_a_zero_budget_loosens_nothing(tiny_comet) -> None:
    compiled, cal, _ = tiny_comet
    report = choose_targets(compiled.card, compiled.weights, cal, budget=0.0)
    assert report.targets == {} and report.bytes_chosen == report.bytes_default
    assert report.trials > 0  # every candidate was tried and refused


def test_targets_file_is_read_per_approximation_set(tmp_path) -> None:
    assert read_site_targets(tmp_path, "comet") == {}
    doc = {"comet": {"targets": {"L0.gelu": 2.0**-8}, "budget": 0.01}}
    (tmp_path / SITE_TARGETS_JSON).write_text(json.dumps(doc))
    assert read_site_targets(tmp_path, "comet") == {"L0.gelu": 2.0**-8}
    assert read_site_targets(tmp_path, "reference") == {}
