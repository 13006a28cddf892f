"""Rounded returns: the error of every coefficient is within the stated bound."""

import math

import numpy as np
import pytest

from common.he import compact
from common.he.crt_bfv import CrtBfvParams
from common.prg import SecureRng


@pytest.fixture(scope="module")
def moduli(he_pair):
    server, _ = he_pair
    return server._moduli[0]


def _ints(data, moduli):
    Q = math.prod(moduli)
    weights = [Q // q * pow(Q // q, -1, q) for q in moduli]
    rows = [r.tolist() for r in data]
    cols = zip(*rows, strict=True)
    return [sum(w * r for w, r in zip(weights, col, strict=True)) % Q for col in cols]


def test_rounding_error_is_bounded_for_every_coefficient(moduli):
    Q = math.prod(moduli)
    L = len(moduli)
    n = 8192
    rng = SecureRng(3)
    data = np.empty((2, L, n), np.uint64)
    for j, q in enumerate(moduli):
        data[:, j] = rng.below(q, 2 * n).reshape(2, n).astype(np.uint64)
    k0, k1 = compact.shifts(moduli)
    assert (k0, k1) == (Q.bit_length() - 64, Q.bit_length() - 72)
    # edge values: 0, Q − 1, just below a rounding boundary of each component
    for c, k in ((0, k0), (1, k1)):
        for x, pos in ((0, 0), (Q - 1, 1), ((1 << (k + 40)) + (1 << (k - 1)) - 1, 2)):
            for j, q in enumerate(moduli):
                data[c, j, pos] = x % q
    raw = compact.pack(data, moduli)
    assert len(raw) == compact.compact_bytes(n) == 17 * n
    back = compact.unpack(raw, moduli, n)
    for c, k in ((0, k0), (1, k1)):
        want = _ints(data[c], moduli)
        got = _ints(back[c], moduli)
        for x, y in zip(want, got, strict=True):
            err = (y - x) % Q
            err = err - Q if err > Q // 2 else err
            assert abs(err) <= 1 << (k - 1)
            assert y % (1 << k) == 0 or y >= Q - (1 << k)  # a multiple of 2^k, mod Q


def test_room_check(moduli):
    p = CrtBfvParams().plain_primes[0]
    compact.check_room(moduli, p, 8192, 114)
    with pytest.raises(ValueError, match="room"):
        compact.check_room(moduli, p, 8192, 120)
    with pytest.raises(ValueError, match="bytes"):
        compact.unpack(b"\0" * 10, moduli, 8192)


def test_constant_mulmod_is_exact(moduli):
    q = moduli[1]
    a = SecureRng(4).words(4096)
    a[:3] = [0, 2**64 - 1, q]
    for w in (1, q - 1, 0x123456789ABCDEF % q):
        got = compact._mulmod_const(a, w, q)
        assert [int(g) for g in got] == [int(x) * w % q for x in a.tolist()]


def test_sparse_returns_carry_c0_at_the_kept_positions_only(moduli):
    """With `keep`, c0 travels at those coefficients only (8 bytes each, c1 whole): they
    come back exactly as in the full form, and c0 is zero everywhere else."""
    n = 8192
    rng = SecureRng(4)
    data = np.empty((2, len(moduli), n), np.uint64)
    for j, q in enumerate(moduli):
        data[:, j] = rng.below(q, 2 * n).reshape(2, n).astype(np.uint64)
    keep = np.sort(rng.below(n, 300).astype(np.int64))
    keep = np.unique(keep)
    raw = compact.pack(data, moduli, keep)
    assert len(raw) == compact.compact_bytes(n, keep.size) == 9 * n + 8 * keep.size
    full = compact.unpack(compact.pack(data, moduli), moduli, n)
    back = compact.unpack(raw, moduli, n, keep)
    assert np.array_equal(back[1], full[1])
    assert np.array_equal(back[0][:, keep], full[0][:, keep])
    rest = np.setdiff1d(np.arange(n), keep)
    assert not back[0][:, rest].any()
    with pytest.raises(ValueError, match="bytes"):
        compact.unpack(raw, moduli, n)  # read as a full return: wrong size
