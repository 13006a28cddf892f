"""Exact truncation (`Mpc.trunc_many`, `Mpc.wrap_bits`): always ⌊v/2^b⌋ + {0, 1} for
|v| < 2^62, with both providers, and the wrap messages are independent of the data."""

import numpy as np
import pytest

from common.mpc.correlations import Plan, pool_arrays, pool_from_arrays
from common.mpc.engine import Mpc
from common.mpc.preprocessing import InsecureDealer, plan_program
from common.mpc.ring import FixedPoint, from_signed, to_signed, wrap_finish, wrap_local
from common.mpc.roles import CLIENT, SERVER
from common.mpc.runner import run_local_program
from common.prg import SecureRng
from common.transport import NullChannel, run_local
from tests.conftest import CHI2_LIMIT, chi2_uniform_bytes

BITS = (1, 13, 26, 40)


def _values(n: int, seed: int = 1) -> np.ndarray:
    """Signed values over the whole valid range |v| < 2^62, with its edges."""
    g = SecureRng(seed)
    v = np.concatenate([g.signed_uniform(61, n // 2), g.signed_uniform(30, n - n // 2)])
    v[:8] = [2**62 - 1, -(2**62) + 1, 2**61, -(2**61), 0, -1, 1, 1 << 40]
    return v


def _trunc_prog(v: np.ndarray, bits=BITS):
    def prog(m: Mpc, data):
        x = m.share_ring(SERVER, from_signed(v) if m.party == SERVER else None, v.shape)
        outs = m.trunc_many([(x, b) for b in bits])
        return [m.reveal_ring(o, to=CLIENT) for o in outs]

    return prog


@pytest.mark.parametrize("provider", ["insecure_dealer", "he"])
def test_exact_truncation_never_fails(provider):
    v = _values(20000)
    _, c = run_local_program(_trunc_prog(v), None, None, provider=provider)
    for b, got in zip(BITS, c.result, strict=True):
        err = to_signed(got) - (v >> b)
        assert set(np.unique(err)) <= {0, 1}, (b, np.unique(err))
        exact = v % (1 << b) == 0  # a multiple of 2^b is divided exactly (0 stays 0)
        assert np.all(err[exact] == 0)


def test_local_truncation_fails_where_the_exact_one_does_not():
    """At |v| ≈ 2^60 local truncation fails for ~1/16 of the values (|v|/2^64): the
    same values through the exact protocol are all right."""
    v = np.full(4000, 1 << 60, dtype=np.int64) * np.where(np.arange(4000) % 2, 1, -1)
    local = run_local_program(
        _trunc_prog(v, (13,)), None, None, "insecure_dealer", FixedPoint(exact_trunc=False)
    )[1]
    exact = run_local_program(_trunc_prog(v, (13,)), None, None, "insecure_dealer")[1]
    bad_local = np.abs(to_signed(local.result[0]) - (v >> 13)) > 1
    bad_exact = np.abs(to_signed(exact.result[0]) - (v >> 13)) > 1
    assert 100 < bad_local.sum() < 500  # expected 250
    assert not bad_exact.any()


def test_wrap_local_and_finish_over_every_share_split():
    """The pure halves on both sides of the wrap: shares that wrap and shares that do not."""
    g = SecureRng(3)
    v = g.signed_uniform(61, 5000)
    s0 = g.words(5000)
    s0[:100] = np.uint64(0)  # party 0's share 0: party 1 holds all of v (no wrap)
    s1 = from_signed(v) - s0
    l0, a = wrap_local(s0, 13, 0)
    l1, b = wrap_local(s1, 13, 1)
    w = (a | b).astype(np.uint64)  # the wrap bit, in the clear (the protocol shares it)
    y = wrap_finish(l0, w, 13, 0) + wrap_finish(l1, np.zeros_like(w), 13, 1)
    assert set(np.unique(to_signed(y) - (v >> 13))) <= {0, 1}


def test_wrap_messages_are_uniform_whatever_the_data():
    """What each party receives in the wrap rounds is its peer's top bits one-time-padded
    by a preprocessed random bit: uniform bytes for all-zero and for large data alike."""
    seen: dict[int, list[np.ndarray]] = {SERVER: [], CLIENT: []}
    n = 64 * 1024

    def prog(m: Mpc, data):
        orig = m.ch.exchange_array

        def spy(tag, arr):
            got = orig(tag, arr)
            if tag == "wrap":
                seen[m.party].append(got.copy())
            return got

        if not isinstance(m.ch, NullChannel):  # not the planning run
            m.ch.exchange_array = spy
        x = m.share(CLIENT, data, (n,))
        m.trunc(x * x)

    for val in (0.0, 3.0e5):
        run_local_program(prog, None, np.full(n, val), provider="he")
    for party in (SERVER, CLIENT):
        assert len(seen[party]) == 2
        for view in seen[party]:
            packed = view.astype(np.uint64) << np.uint64(56)
            assert chi2_uniform_bytes(packed) < CHI2_LIMIT


def test_exact_and_local_plans_differ_and_store():
    """The policy is part of the plan (the parties' digests differ if they disagree),
    and a pool with wrap correlations survives storage."""

    def prog(m: Mpc):
        x = m.share(CLIENT, None if m.party == SERVER else np.ones(10), (10,))
        return m.square(x)

    exact, _ = plan_program(prog, CLIENT)
    local, _ = plan_program(prog, CLIENT, FixedPoint(exact_trunc=False))
    assert exact.wraps == 10 and local.wraps == 0
    assert exact.digest() != local.digest()

    plan = Plan(squares=10, wraps=10)

    def body(ch):
        return InsecureDealer(SecureRng(5)).generate(ch, plan)

    p0, p1 = run_local(body, (), ())
    (r0, z0), (r1, z1) = (pool_from_arrays(plan, pool_arrays(p)).wraps(10) for p in (p0, p1))
    assert r0.dtype == np.uint8 and set(np.unique(np.concatenate([r0, r1]))) <= {0, 1}
    assert np.array_equal(z0 + z1, (r0 & r1).astype(np.uint64))  # shares of u·v
