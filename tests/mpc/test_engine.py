"""Every op against numpy, run by both parties over an in-process channel."""

import numpy as np
import pytest

from common.mpc.ring import FixedPoint
from common.mpc.roles import CLIENT, SERVER
from common.mpc.runner import run_local_program

TOL = 2.0**-11  # a few units of 2^-16 plus truncation's one-ulp error per step


def _run(prog, data0, data1, provider="insecure_dealer", f=16, exact=True):
    fxp = FixedPoint(f, exact_trunc=exact)
    r0, r1 = run_local_program(prog, data0, data1, provider=provider, fxp=fxp)
    return r0, r1


def _wrap_bytes(n: int) -> int:
    """Bytes each party sends for n exact truncations (one bit each)."""
    return -(-n // 8)


def _edges(rng, shape):
    x = rng.normal(0, 3, shape)
    flat = x.reshape(-1)
    flat[:6] = [0.0, -1.0, 1.0, 2.0**-16, -200.0, 300.0]
    return x


def _inputs(data, key, shape, mpc, owner=CLIENT):
    return mpc.share(owner, (data or {}).get(key) if mpc.party == owner else None, shape)


def test_share_reveal_both_and_one():
    x = np.linspace(-1000, 1000, 101)

    def prog(m, data):
        s = _inputs(data, "x", x.shape, m)
        return m.reveal(s), m.reveal(s, to=SERVER), m.reveal(s, to=CLIENT)

    r0, r1 = _run(prog, None, {"x": x})
    assert np.allclose(r0.result[0], x, atol=2**-16) and np.allclose(r1.result[0], x, atol=2**-16)
    assert r1.result[1] is None and r0.result[2] is None
    assert np.allclose(r0.result[1], x, atol=2**-16) and np.allclose(r1.result[2], x, atol=2**-16)


def test_linear_ops_local():
    rng = np.random.default_rng(0)
    x, y = _edges(rng, (4, 5)), rng.normal(size=(4, 5))

    def prog(m, data):
        a, b = _inputs(data, "x", (4, 5), m), _inputs(data, "y", (4, 5), m)
        outs = [a + b, a - b, m.add_public(a, 2.5), m.mul_public(a, -0.75), m.mul_public_int(a, 3)]
        outs += [m.sum(a, 1), m.mean(a, 0)]
        return [m.reveal(o, CLIENT) for o in outs]

    _, r1 = _run(prog, None, {"x": x, "y": y})
    refs = [x + y, x - y, x + 2.5, -0.75 * x, 3 * x, x.sum(1), x.mean(0)]
    for got, ref in zip(r1.result, refs, strict=True):
        assert np.abs(got - ref).max() <= TOL


@pytest.mark.parametrize("exact", [True, False])
def test_mul_square_exact_bytes_and_rounds(exact):
    rng = np.random.default_rng(1)
    n = 1000
    x, y = _edges(rng, n), rng.normal(0, 10, n)

    def prog(m, data):
        a, b = _inputs(data, "x", (n,), m), _inputs(data, "y", (n,), m)
        with m.ch.scope(op="mul"):
            p = m.mul(a, b)
        with m.ch.scope(op="square"):
            s = m.square(a)
        return m.reveal(p, CLIENT), m.reveal(s, CLIENT)

    r0, r1 = _run(prog, None, {"x": x, "y": y}, exact=exact)
    assert np.abs(r1.result[0] - x * y).max() <= TOL * 20  # |y| up to ~40 scales the ulp
    assert np.abs(r1.result[1] - x * x).max() <= TOL * 20
    # the exact truncation: one more round and one bit per product
    extra, extra_rounds = (_wrap_bytes(n), 1) if exact else (0, 0)
    for r in (r0, r1):
        bd = r.meter.breakdown(by=("phase", "op"))
        assert bd[("online", "mul")].sent_bytes == 16 * n + extra
        assert bd[("online", "mul")].rounds == 1 + extra_rounds
        assert bd[("online", "square")].sent_bytes == 8 * n + extra
        assert bd[("online", "square")].rounds == 1 + extra_rounds


def test_matmul_batched():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(3, 4, 8)), rng.normal(size=(3, 8, 5))

    def prog(m, data):
        a = _inputs(data, "x", x.shape, m, owner=SERVER)
        b = _inputs(data, "y", y.shape, m)
        with m.ch.scope(op="mm"):
            z = m.matmul(a, b)
        return m.reveal(z, CLIENT)

    r0, r1 = _run(prog, {"x": x}, {"y": y})
    assert np.abs(r1.result - x @ y).max() <= TOL
    sent = r0.meter.breakdown(by=("op",))[("mm",)].sent_bytes
    assert sent == 8 * (x.size + y.size) + _wrap_bytes(3 * 4 * 5)


@pytest.mark.parametrize("exact", [True, False])
def test_linear_layer_sends_only_masked_input(exact):
    rng = np.random.default_rng(3)
    x, w, b = rng.normal(size=(2, 6, 16)), rng.normal(0, 0.5, (16, 9)), rng.normal(size=9)

    def prog(m, data):
        a = _inputs(data, "x", x.shape, m)
        with m.ch.scope(op="lin"):
            z = m.linear(
                a, "w", 9, weight=data.get("w") if data else None, bias=(data or {}).get("b")
            )
        return m.reveal(z, CLIENT)

    r0, r1 = _run(prog, {"w": w, "b": b}, {"x": x}, exact=exact)
    assert np.abs(r1.result - (x @ w + b)).max() <= TOL
    lin0 = r0.meter.breakdown(by=("phase", "op"))[("online", "lin")]
    lin1 = r1.meter.breakdown(by=("phase", "op"))[("online", "lin")]
    extra = _wrap_bytes(2 * 6 * 9) if exact else 0
    assert lin0.sent_bytes == extra and lin1.sent_bytes == 8 * x.size + extra
    assert max(lin0.rounds, lin1.rounds) == (2 if exact else 1)


@pytest.mark.parametrize("provider,exact", [("insecure_dealer", True), ("he", True),
                                            ("insecure_dealer", False)])  # fmt: skip
def test_lookup_rows_in_z48(provider, exact):
    """One-hot rows × a server table: exact rows (no truncation), 6 bytes per one-hot
    entry from the client, nothing else from the server but the lift's wrap bits (one
    per output, exact mode); negative entries lift correctly."""
    rng = np.random.default_rng(4)
    V, d = 50, 7
    table = rng.normal(0, 0.5, (V, d))
    table[3] = [-1.0, 1.0, 0.0, -(2.0**-16), 1.5, -1.5, 0.25]
    ids = np.array([[3, 0, 49], [7, 7, 3]])
    onehot = np.zeros((2, 3, V), dtype=np.int64)
    np.put_along_axis(onehot, ids[..., None], 1, axis=-1)

    def prog(m, data):
        with m.ch.scope(op="lookup"):
            z = m.lookup((data or {}).get("oh"), (2, 3, V), "emb", d, (data or {}).get("table"))
        return m.reveal(z, CLIENT)

    r0, r1 = _run(prog, {"table": table}, {"oh": onehot}, provider=provider, exact=exact)
    want = np.round(table * 2.0**16) / 2.0**16
    assert np.array_equal(r1.result, want[ids])
    c0 = r0.meter.breakdown(by=("phase", "op"))[("online", "lookup")]
    c1 = r1.meter.breakdown(by=("phase", "op"))[("online", "lookup")]
    extra = _wrap_bytes(2 * 3 * d) if exact else 0
    assert c0.sent_bytes == extra and c1.sent_bytes == 6 * onehot.size + extra


def test_server_without_weight_is_a_clear_error():
    def prog(m, data):
        a = _inputs(data, "x", (2, 3), m)
        return m.linear(a, "w", 4, weight=None)

    with pytest.raises(ValueError, match="weight"):
        _run(prog, None, {"x": np.zeros((2, 3))})


@pytest.mark.slow
def test_he_provider_matches_dealer():
    """The whole op set once with real HE preprocessing."""
    rng = np.random.default_rng(4)
    x, y, w = rng.normal(size=(4, 8)), rng.normal(size=(4, 8)), rng.normal(0, 0.3, (8, 3))

    def prog(m, data):
        a, b = _inputs(data, "x", x.shape, m), _inputs(data, "y", y.shape, m)
        outs = [
            m.mul(a, b),
            m.square(a),
            m.matmul(a, b.reshape(8, 4)),
            m.linear(a, "w", 3, weight=data and data.get("w")),
        ]
        return [m.reveal(o, CLIENT) for o in outs]

    _, r1 = _run(prog, {"w": w}, {"x": x, "y": y}, provider="he")
    refs = [x * y, x * x, x @ y.reshape(8, 4), x @ w]
    for got, ref in zip(r1.result, refs, strict=True):
        assert np.abs(got - ref).max() <= TOL
