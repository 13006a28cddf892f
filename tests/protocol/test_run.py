"""`PlanCache`: the server plans each shape once; a cached plan serves any padding mask."""

from __future__ import annotations

import numpy as np
import pytest

from common.mpc.preprocessing import make_provider
from common.mpc.roles import CLIENT, SERVER
from common.protocol.calibrate import approx_for, compile_loaded
from common.protocol.program import ClientInput
from common.protocol.run import PlanCache, offline_phase, online_phase, plan_forward
from common.transport import Channel, run_local
from tests.protocol.test_program import batches, tiny

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    model, cfg = tiny("bert")
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("m")
    return compile_loaded(model, cfg, approx_for(d), batches(rng), "tiny")


def _input(lengths: list[int], length: int = 10) -> ClientInput:
    rng = np.random.default_rng(sum(lengths))
    ids = rng.integers(3, 120, (len(lengths), length))
    mask = np.zeros((len(lengths), length), dtype=np.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return ClientInput(ids, mask)


def _private(compiled, inp: ClientInput, server_plan) -> np.ndarray:
    """One private run (dealer correlations) with the server's plan given."""
    shape = tuple(inp.token_ids.shape)

    def body(ch: Channel, role: int):
        if role == SERVER:
            planned = server_plan
        else:
            planned = plan_forward(CLIENT, compiled.card, shape, inp.attention_mask, None, inp)
        pools = offline_phase(ch, planned, make_provider("insecure_dealer"))
        return online_phase(ch, planned, pools)

    _, client = run_local(body, (SERVER,), (CLIENT,))
    return client.output


def test_a_cached_plan_equals_a_fresh_one_for_another_mask(compiled) -> None:
    cache = PlanCache()
    a, b = _input([10, 4]), _input([6, 9])
    first = cache.plan(compiled.card, (2, 10), a.attention_mask, compiled.weights)
    again = cache.plan(compiled.card, (2, 10), b.attention_mask, compiled.weights)
    assert (cache.misses, cache.hits) == (1, 1)
    fresh = plan_forward(SERVER, compiled.card, (2, 10), b.attention_mask, compiled.weights, None)
    assert again.digest() == first.digest() == fresh.digest()
    # Another shape or hide_lengths is planned anew.
    cache.plan(compiled.card, (2, 12), np.ones((2, 12)), compiled.weights)
    cache.plan(compiled.card, (2, 10), np.ones((2, 10)), compiled.weights, hide_lengths=True)
    assert cache.misses == 3


def test_a_cached_plan_runs_with_the_sessions_own_mask(compiled) -> None:
    """The program is rebuilt with the new mask: the output equals a run planned afresh
    (and differs from what the first session's mask would give)."""
    cache = PlanCache()
    a, b = _input([10, 4]), _input([6, 9])
    cache.plan(compiled.card, (2, 10), a.attention_mask, compiled.weights)
    cached = cache.plan(compiled.card, (2, 10), b.attention_mask, compiled.weights)
    fresh = plan_forward(SERVER, compiled.card, (2, 10), b.attention_mask, compiled.weights, None)
    got, want = _private(compiled, b, cached), _private(compiled, b, fresh)
    np.testing.assert_allclose(got, want, atol=2e-3)
    wrong = plan_forward(SERVER, compiled.card, (2, 10), a.attention_mask, compiled.weights, None)
    assert np.max(np.abs(_private(compiled, b, wrong) - want)) > 1e-2


def test_the_cache_is_bounded_and_serves_one_model(compiled) -> None:
    cache = PlanCache(size=2)
    for n in (8, 9, 10):
        cache.plan(compiled.card, (1, n), np.ones((1, n)), compiled.weights)
    cache.plan(compiled.card, (1, 8), np.ones((1, 8)), compiled.weights)
    assert cache.misses == 4  # (1, 8) was dropped
    other = dict(compiled.weights) if isinstance(compiled.weights, dict) else object()
    with pytest.raises(ValueError, match="one model"):
        cache.plan(compiled.card, (1, 8), np.ones((1, 8)), other)
