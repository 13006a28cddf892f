import random

import numpy as np
import pytest

from common.he.crt import CrtBasis, mulmod

PRIMES = [288230376150630401, 288230376150712321, 288230376150876161]


def test_mulmod_matches_python():
    rng = np.random.default_rng(0)
    p = PRIMES[0]
    a = rng.integers(0, p, 5000, dtype=np.uint64)
    b = rng.integers(0, p, 5000, dtype=np.uint64)
    a[:3] = [0, 1, p - 1]
    b[:3] = [p - 1, p - 1, p - 1]
    got = mulmod(a, b, p)
    assert all(int(g) == int(x) * int(y) % p for g, x, y in zip(got, a, b, strict=True))


def test_crt_to_ring_signed_edges():
    basis = CrtBasis(PRIMES)
    rnd = random.Random(1)
    vals = [0, 1, -1, basis.half - 1, -basis.half + 1, 2**64, -(2**64), 2**170 + 5]
    vals += [rnd.randrange(-basis.half + 1, basis.half) for _ in range(3000)]
    res = [np.array([v % p for v in vals], dtype=np.uint64) for p in PRIMES]
    got = basis.to_ring(res)
    assert all(int(g) == v % 2**64 for g, v in zip(got, vals, strict=True))


def test_residues_of_limbs():
    basis = CrtBasis(PRIMES)
    rng = np.random.default_rng(2)
    limbs = [rng.integers(0, 2**64 - 1, 200, dtype=np.uint64, endpoint=True) for _ in range(3)]
    res = basis.residues_of_limbs(limbs)
    for i in range(200):
        v = sum(int(limbs[j][i]) << (64 * j) for j in range(3))
        assert [int(r[i]) for r in res] == [v % p for p in PRIMES]


def test_rejects_non_coprime():
    with pytest.raises(ValueError, match="coprime"):
        CrtBasis([15, 21])
