import numpy as np
import pytest

from common.mpc.ring import (
    U64,
    FixedPoint,
    random_ring,
    ring_matmul,
    ring_matmul_public,
    to_signed,
    trunc_share,
)
from common.prg import SecureRng


def _ref_matmul(a, b):
    return (a.astype(object) @ b.astype(object)) % (1 << 64)


@pytest.mark.parametrize("f", [12, 16, 18])
def test_fixed_point_roundtrip_edges(f):
    fx = FixedPoint(f)
    vals = np.array([0.0, -0.0, 1.0, -1.0, 2.0**-f, -(2.0**-f), 1234.5678, -1234.5678])
    vals = np.concatenate([vals, [fx.max_abs / 2, -fx.max_abs / 2]])
    dec = fx.decode(fx.encode(vals))
    assert np.all(np.abs(dec - vals) <= 2.0 ** -(f + 1))


def test_fixed_point_rejects_out_of_range():
    fx = FixedPoint(16)
    with pytest.raises(ValueError, match="range"):
        fx.encode(np.array([fx.max_abs]))
    with pytest.raises(ValueError, match="NaN"):
        fx.encode(np.array([np.nan]))
    with pytest.raises(ValueError):
        FixedPoint(40)


def test_ring_matmul_exact():
    rng = SecureRng(1)
    a = random_ring(rng, (7, 33))
    b = random_ring(rng, (33, 5))
    b[0, 0] = np.uint64(2**64 - 1)
    assert np.array_equal(ring_matmul(a, b).astype(object), _ref_matmul(a, b))
    # batched
    a3, b3 = random_ring(rng, (3, 4, 6)), random_ring(rng, (3, 6, 2))
    for i in range(3):
        assert np.array_equal(ring_matmul(a3, b3)[i].astype(object), _ref_matmul(a3[i], b3[i]))


@pytest.mark.parametrize("wbits", [1, 20, 30])
def test_ring_matmul_public_exact(wbits):
    rng = np.random.default_rng(2)
    x = random_ring(SecureRng(2), (9, 700))
    w = rng.integers(-(2**wbits) + 1, 2**wbits, (700, 11))
    got = ring_matmul_public(x, w).astype(object)
    assert np.array_equal(got, _ref_matmul(x, w.astype(object)))


def test_truncation_exact_when_no_wrap():
    rng = np.random.default_rng(3)
    fx = FixedPoint(16)
    v = fx.encode(rng.normal(0, 100, 10000)) * fx.encode(rng.normal(0, 1, 10000))
    s0 = random_ring(SecureRng(3), v.shape)
    s1 = v - s0
    t = trunc_share(s0, 16, 0) + trunc_share(s1, 16, 1)
    err = to_signed(t) - (to_signed(v) >> 16)
    assert set(np.unique(err)) <= {-1, 0, 1}


@pytest.mark.parametrize("log_v", [30, 54])
def test_truncation_failure_rate(log_v):
    """Failure (a ~2^(64-f) error) happens with probability |v| / 2^64 (docs/SECURITY.md)."""
    rng = SecureRng(4)
    n = 1 << 18
    v = np.full(n, 1 << log_v, dtype=U64)
    s0 = random_ring(rng, n)
    t = trunc_share(s0, 16, 0) + trunc_share(v - s0, 16, 1)
    err = np.abs(to_signed(t) - (1 << (log_v - 16)))
    fails = int((err > 1).sum())
    expected = n * 2.0 ** (log_v - 64)
    assert abs(fails - expected) <= 6 * np.sqrt(expected) + 1
    if log_v == 54:
        assert fails > 0  # the analysis predicts ~256: the test must be able to see them


def test_public_matrix_encodes_as_fixed_point_and_multiplies_the_same():
    """A held `PublicMatrix` is the same integers as `encode_int` and gives the same
    exact ring product as the plain int64 matrix."""
    from common.mpc.ring import PublicMatrix, as_ints, ring_matmul_public

    fxp = FixedPoint(frac_bits=13)
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.2, (40, 24))
    m = PublicMatrix.encode(w, fxp)
    assert np.array_equal(as_ints(m), fxp.encode_int(w))
    assert m.max_abs == int(np.abs(fxp.encode_int(w)).max()) and m.shape == (40, 24)
    x = rng.integers(0, 2**63, (5, 40), dtype=np.uint64) * np.uint64(2)
    assert np.array_equal(ring_matmul_public(x, m), ring_matmul_public(x, fxp.encode_int(w)))
    with pytest.raises(ValueError, match="NaN"):
        PublicMatrix.encode(np.array([[np.nan]]), fxp)
    with pytest.raises(ValueError, match="range"):
        PublicMatrix.encode(np.array([[fxp.max_abs * 2]]), fxp)


def test_public_matrices_reuse_an_encoding_only_for_the_same_array():
    """The memo hands back the encoding made from the very array object under that key;
    a new array under the same key (even with equal values) or another precision is
    encoded afresh, and joins are memoised while their parts are the same objects."""
    from common.mpc.ring import PublicMatrices

    memo, fxp = PublicMatrices(), FixedPoint(frac_bits=13)
    w = np.full((3, 2), 0.5)
    first = memo.encode("L0.q", w, fxp)
    assert memo.encode("L0.q", w, fxp) is first
    other = w.copy()
    assert memo.encode("L0.q", other, fxp) is not first
    assert memo.encode("L0.q", other, FixedPoint(frac_bits=16)).max_abs == 1 << 15
    a, b = np.ones((3, 2)), np.zeros((3, 1))
    j = memo.joined("L0.qkv", [a, b])
    assert j.shape == (3, 3) and memo.joined("L0.qkv", [a, b]) is j
    assert memo.joined("L0.qkv", [a, b.copy()]) is not j
    assert memo.joined("L0.o", [a]) is a


@pytest.mark.parametrize("k", [1, 2, 64, 128, 129, 768, 3000])
def test_ring_matmul_exact_at_every_limb_width(k):
    """Full-range uint64 operands (the worst case for the limb sums) at inner sizes that
    pick each limb width: exact against integer arithmetic."""
    rng = np.random.default_rng(k)
    a = rng.integers(0, 2**64 - 1, (3, k), dtype=np.uint64, endpoint=True)
    b = rng.integers(0, 2**64 - 1, (k, 4), dtype=np.uint64, endpoint=True)
    a[0] = np.uint64(2**64 - 1)  # all limbs at their maximum
    b[:, 0] = np.uint64(2**64 - 1)
    assert np.array_equal(ring_matmul(a, b).astype(object), _ref_matmul(a, b))
