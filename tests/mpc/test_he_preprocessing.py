"""HE preprocessing: exact correlations in Z_2^64 and uniform views."""

import numpy as np
import pytest

from common.mpc.correlations import LinearSpec, Plan
from common.mpc.he_protocols import he_products, unpack_blobs
from common.mpc.preprocessing import HeProvider, InsecureDealer, InsecureDealerWarning
from common.mpc.ring import ring_matmul, ring_matmul_public
from common.mpc.roles import CLIENT, SERVER
from common.transport import Channel, NullChannel, run_local
from tests.conftest import CHI2_LIMIT, chi2_uniform_bytes


def _gen(plan, weights=None):
    def body(ch: Channel):
        prov = HeProvider(rng=np.random.default_rng(10 + ch.party))
        return prov.generate(ch, plan, weights if ch.party == SERVER else None), ch.meter

    return run_local(body)


def test_triples_squares_exact():
    plan = Plan(triples=9000, squares=100)
    (p0, _m0), (p1, m1) = _gen(plan)
    a0, b0, c0 = p0.triples(9000)
    a1, b1, c1 = p1.triples(9000)
    assert np.array_equal(c0 + c1, (a0 + a1) * (b0 + b1))
    s0, s1 = p0.squares(100), p1.squares(100)
    assert np.array_equal(s0[1] + s1[1], (s0[0] + s1[0]) ** 2)
    # 2 chunks of 8192 triples: 3 primes × 2 seeded ciphertexts up, 3 results down per chunk
    tri = m1.breakdown(by=("phase", "op"))[("offline", "triples")]
    per = (tri.sent_bytes + tri.recv_bytes) / 9000
    assert tri.rounds == 2 and per < 2 * 400


@pytest.mark.parametrize("provider", ["he", "dealer"])
def test_newton_masks_exact(provider):
    plan = Plan(newton=[(300, 3), (50, 5)])
    if provider == "he":
        (p0, _), (p1, _) = _gen(plan)
    else:

        def body(ch: Channel):
            with pytest.warns(InsecureDealerWarning):
                dealer = InsecureDealer()
            return dealer.generate(ch, plan)

        p0, p1 = run_local(body)
    for n, st in plan.newton:
        m0, m1 = p0.newton(n, st), p1.newton(n, st)
        a, b = m0.a + m1.a, m0.b + m1.b
        assert np.array_equal(m0.a2 + m1.a2, a * a)
        assert np.array_equal(m0.ab + m1.ab, a * b[None, :])


def test_newton_session_opens_each_mask_once():
    """One message per step (plus x's mask with the first); right products."""
    from common.mpc.engine import Mpc
    from common.mpc.ring import FixedPoint
    from common.mpc.runner import run_local_program

    fxp = FixedPoint()
    x = np.linspace(0.5, 4.0, 64)
    ys = [np.linspace(1.0, 2.0, 64), np.linspace(-1.0, 1.0, 64)]

    def prog(mpc: Mpc, data):
        xs = mpc.share(CLIENT, data["x"] if mpc.party == CLIENT else None, (64,))
        yv = [mpc.share(CLIENT, y if mpc.party == CLIENT else None, (64,)) for y in ys]
        sess = mpc.newton_session(xs, 2)
        with mpc.ch.scope(op="t"):
            out = [sess.products(y) for y in yv]
        return [mpc.reveal(v, to=CLIENT) for pair in out for v in pair]

    _s, c = run_local_program(prog, None, {"x": x}, provider="insecure_dealer", fxp=fxp)
    got = c.result
    for j, y in enumerate(ys):
        assert np.allclose(got[2 * j], y * y, atol=8 * 2.0**-fxp.frac_bits)
        assert np.allclose(got[2 * j + 1], x * y, atol=8 * 2.0**-fxp.frac_bits)
    t = c.meter.breakdown(by=("phase", "op"))[("online", "t")]
    assert t.sent_msgs == 2 and t.rounds == 2
    assert t.sent_bytes == 8 * 64 * 3  # y−a twice, x−b once


def test_matrix_triple_and_linear_mask_exact():
    rng = np.random.default_rng(3)
    w = rng.integers(-(2**20), 2**20, (24, 10))
    spec = LinearSpec("w", 5, 24, 10)
    plan = Plan(matmuls=[(2, 6, 16, 4)], linears=[spec])
    (p0, _), (p1, _) = _gen(plan, {"w": w})
    A0, B0, C0 = p0.matmul_triple((2, 6, 16, 4))
    A1, B1, C1 = p1.matmul_triple((2, 6, 16, 4))
    assert np.array_equal(C0 + C1, ring_matmul(A0 + A1, B0 + B1))
    l0, l1 = p0.linear_mask(spec), p1.linear_mask(spec)
    assert l0.r is None and l1.r is not None
    assert np.array_equal(l0.share + l1.share, ring_matmul_public(l1.r, w))


def test_weights_beyond_public_bound_rejected():
    w = np.full((4, 4), 2**40)
    with pytest.raises(ValueError, match="bound"):
        _gen(Plan(linears=[LinearSpec("w", 2, 4, 4)]), {"w": w})


def test_plan_mismatch_detected():
    def body(ch):
        plan = Plan(triples=10 if ch.party == 0 else 11)
        return InsecureDealer().generate(ch, plan)

    with pytest.raises(Exception, match="different programs"):
        run_local(body)


def test_dealer_warns():
    with pytest.warns(InsecureDealerWarning):
        InsecureDealer()


def _client_view_of_products(server_value: int) -> np.ndarray:
    """What the client reconstructs from the server's reply, for a fixed server operand."""
    n = 8192

    def body(ch):
        rng = np.random.default_rng(ch.party + 100)
        prov = HeProvider(rng=rng)
        prov.setup(ch)
        if ch.party == CLIENT:
            ops = [np.full(n, 12345, np.uint64)]
        else:
            ops = [np.full(n, server_value, np.uint64)]
        return he_products(ch, prov.he, ops, rng)

    _, client_share = run_local(body)
    return client_share


@pytest.mark.parametrize("server_value", [0, 2**64 - 1])
def test_client_view_uniform_whatever_server_holds(server_value):
    view = _client_view_of_products(server_value)
    assert chi2_uniform_bytes(view) < CHI2_LIMIT


def test_server_view_of_linear_input_uniform():
    """The only online message of a linear layer, x_c − r, is uniform for any input."""
    from common.mpc.ring import FixedPoint
    from common.mpc.runner import run_local_program

    seen = []

    def prog(m, data):
        x = m.share(CLIENT, (data or {}).get("x") if m.party == CLIENT else None, (64, 128))
        if m.party == SERVER and not isinstance(m.ch, NullChannel):
            orig = m.ch.recv_array

            def spy(tag, shape, dtype):
                arr = orig(tag, shape, dtype)
                if tag == "linear":
                    seen.append(arr.copy())
                return arr

            m.ch.recv_array = spy
        return m.linear(x, "w", 8, weight=(data or {}).get("w"))

    for xval in (0.0, 1000.0):
        x = np.full((64, 128), xval)
        run_local_program(
            prog, {"w": np.ones((128, 8))}, {"x": x}, provider="insecure_dealer", fxp=FixedPoint()
        )
    assert len(seen) == 2
    for view in seen:
        assert chi2_uniform_bytes(view) < CHI2_LIMIT


def test_beaver_messages_uniform():
    """Opened differences x − a are uniform whatever x is."""
    from common.mpc.runner import run_local_program

    seen = []

    def prog(m, data):
        x = m.share(SERVER, (data or {}).get("x") if m.party == SERVER else None, (20000,))
        if m.party == CLIENT and not isinstance(m.ch, NullChannel):
            orig = m.ch.exchange_array

            def spy(tag, arr):
                out = orig(tag, arr)
                if tag == "beaver":
                    seen.append(out.copy())
                return out

            m.ch.exchange_array = spy
        return m.mul(x, x)

    for xval in (0.0, -7.5):
        run_local_program(prog, {"x": np.full(20000, xval)}, None, provider="insecure_dealer")
    assert len(seen) == 2
    for view in seen:
        assert chi2_uniform_bytes(view) < CHI2_LIMIT


def test_truncated_batch_rejected():
    with pytest.raises(ValueError):
        unpack_blobs(b"\x02\x00\x00\x00\x05\x00\x00\x00ab", 2)
