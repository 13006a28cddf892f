"""Vectorised residue-number arithmetic for plaintext primes below 2^60.

numpy has no 128-bit integers; products of two 60-bit residues are reduced with a
Barrett step whose quotient comes from 80-bit extended precision (x86 long double,
64-bit mantissa), then corrected exactly in wrapping uint64 arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

U64 = np.uint64
_LD = np.longdouble

if np.finfo(_LD).nmant < 63:  # pragma: no cover - other platforms
    raise ImportError("common.he.crt needs an 80-bit long double (x86-64)")


def mulmod(a: NDArray[np.uint64], b: NDArray[np.uint64] | int, p: int) -> NDArray[np.uint64]:
    """(a · b) mod p, elementwise, for a, b < p < 2^60."""
    a = np.asarray(a, dtype=U64)
    bb = np.asarray(b, dtype=U64)
    q = np.floor(a.astype(_LD) * bb.astype(_LD) / _LD(p)).astype(U64)
    r = (a * bb - q * U64(p)).view(np.int64)  # exact mod 2^64; true value in (-2p, 2p)
    r = np.where(r < 0, r + np.int64(p), r)
    r = np.where(r >= p, r - np.int64(p), r)
    return r.astype(U64)


_M32 = U64(0xFFFFFFFF)


def mulhi_const(a: NDArray[np.uint64], b: int) -> NDArray[np.uint64]:
    """High 64 bits of a·b (uint64 array times a constant below 2^64), exact."""
    b0, b1 = U64(b & 0xFFFFFFFF), U64(b >> 32)
    a0, a1 = a & _M32, a >> U64(32)
    p01, p10 = a0 * b1, a1 * b0
    mid = ((a0 * b0) >> U64(32)) + (p01 & _M32) + (p10 & _M32)
    return a1 * b1 + (p01 >> U64(32)) + (p10 >> U64(32)) + (mid >> U64(32))


def mulmod_const(a: NDArray[np.uint64], w: int, q: int) -> NDArray[np.uint64]:
    """(a · w) mod q for any uint64 a and a constant w < q < 2^62 (Shoup: with
    w' = floor(w·2^64/q), a·w − floor(a·w'/2^64)·q lies in [0, 2q)). Exact, no floats;
    about 3× faster than `mulmod`'s extended-precision quotient."""
    r = a * U64(w) - mulhi_const(a, (int(w) << 64) // q) * U64(q)
    return np.where(r >= U64(q), r - U64(q), r)


def addmod(a: NDArray[np.uint64], b: NDArray[np.uint64], p: int) -> NDArray[np.uint64]:
    s = a + b  # < 2^61, no wrap
    return np.where(s >= U64(p), s - U64(p), s)


def submod(a: NDArray[np.uint64], b: NDArray[np.uint64], p: int) -> NDArray[np.uint64]:
    return np.where(a >= b, a - b, a + (U64(p) - b))


def limbs_mod(limbs: Sequence[NDArray[np.uint64]], p: int) -> NDArray[np.uint64]:
    """Σ limbs[i] · 2^(64 i) mod p, for a multi-limb non-negative integer."""
    acc = limbs[0] % U64(p)
    for i, limb in enumerate(limbs[1:], start=1):
        acc = addmod(acc, mulmod_const(limb, pow(2, 64 * i, p), p), p)
    return acc


class CrtBasis:
    """Pairwise-coprime moduli p_0..p_{n-1} and Garner's mixed-radix reconstruction.

    `to_ring` maps residues of an integer X with |X| < P/2 (P = Π p_i) to X mod 2^64,
    with no big integers: X + floor(P/2) is reconstructed in mixed radix, whose digits
    are combined in wrapping uint64 arithmetic, and floor(P/2) is subtracted mod 2^64.
    Cost: n(n-1)/2 vectorised mulmods per value.
    """

    def __init__(self, primes: Sequence[int]) -> None:
        self.primes = [int(p) for p in primes]
        for i, p in enumerate(self.primes):
            if not 2 < p < 1 << 60:
                raise ValueError("CRT moduli must be in (2, 2^60)")
            for q in self.primes[:i]:
                if math.gcd(p, q) != 1:
                    raise ValueError("CRT moduli must be pairwise coprime")
        self.modulus = math.prod(self.primes)
        self.half = self.modulus // 2
        self._half_res = [self.half % p for p in self.primes]
        # inv[i][j] = p_j^{-1} mod p_i, for j < i
        self._inv = [
            [pow(pj, -1, pi) for pj in self.primes[:i]] for i, pi in enumerate(self.primes)
        ]
        radix = 1
        self._radix_mod64 = []
        for p in self.primes:
            self._radix_mod64.append(U64(radix % (1 << 64)))
            radix *= p

    @property
    def bits(self) -> float:
        return math.log2(self.modulus)

    def residues_of_limbs(self, limbs: Sequence[NDArray[np.uint64]]) -> list[NDArray[np.uint64]]:
        """Residues of a non-negative multi-limb integer under every modulus."""
        return [limbs_mod(limbs, p) for p in self.primes]

    def residues_of_signed(self, x: NDArray[np.int64]) -> list[NDArray[np.uint64]]:
        """Residues of signed 64-bit integers."""
        x = np.asarray(x, dtype=np.int64)
        return [np.mod(x, np.int64(p)).astype(U64) for p in self.primes]

    def to_ring(self, residues: Sequence[NDArray[np.uint64]]) -> NDArray[np.uint64]:
        """X mod 2^64 for the centred integer X (|X| < P/2) with the given residues."""
        digits: list[NDArray[np.uint64]] = []
        for i, p in enumerate(self.primes):
            t = addmod(np.asarray(residues[i], dtype=U64) % U64(p), U64(self._half_res[i]), p)
            for j, v in enumerate(digits):
                t = mulmod_const(submod(t, v % U64(p), p), self._inv[i][j], p)
            digits.append(t)
        out = np.zeros_like(digits[0])
        for v, r in zip(digits, self._radix_mod64, strict=True):
            out += v * r
        return out - U64(self.half % (1 << 64))
