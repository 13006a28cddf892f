"""Returned ciphertexts with their low bits rounded away (17 instead of 8·L·2 bytes per
coefficient, L the number of return-level moduli).

A returned BFV ciphertext (c0, c1) lives modulo Q = q_0···q_{L−1} (the return level;
below 2^(64·L)). Its low bits carry only noise: decryption computes c0 + c1·s mod Q and
is correct while the total noise stays below Δ/2 = Q/(2t). So the server sends c0
rounded to a multiple of 2^K0 and c1 to a multiple of 2^K1, i.e. the top 64 bits of
each c0 coefficient and the top 72 of each c1 coefficient (K0 = log Q − 64,
K1 = log Q − 72), and the client multiplies back.

Worst-case bound (not a probabilistic one): the rounding adds |e0| ≤ 2^(K0−1) from c0
and |Σ_j s_j·e1_j| ≤ N·2^(K1−1) from c1 (ternary s, N = 8192 = 2^13). At the default
return level (three 60-bit primes, log Q = 180): ≤ 2^115 + 2^120, plus the flooded
noise (< 2^(W+1), `CrtBfvParams.flood_bits`, W ≤ 114), stays below Δ/2 ≈ 2^121:
decryption is always correct. `check_room` enforces this for the actual parameters.
Rounding is a function of the flooded ciphertext only, so it reveals nothing more than
the ciphertext it replaces.

Wire layout per ciphertext: c0 as N uint64 (bits K0..K0+63), then c1 as N uint64
(bits K1..K1+63) and N uint8 (bits K1+64..K1+71): 17·N bytes.

Sparse returns: a coefficient-packed product (`common.he.packing`) is useful at only
mb·nb of its N coefficients. Decrypting coefficient i needs c0[i] and all of c1, so the
server may send c0 at those positions only (`keep`, public: both parties compute it
from the shapes) and the client fills the rest with zeros, which decrypt to garbage it
never reads: 9·N + 8·|keep| bytes. Sending a subset of a flooded ciphertext's
coefficients reveals no more than the whole ciphertext.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from common.he.crt import addmod, submod
from common.he.crt import mulmod_const as _mulmod_const

U64 = np.uint64
C0_BITS, C1_BITS = 64, 72  # bits kept of each c0 and c1 coefficient
_M32 = U64(0xFFFFFFFF)


def compact_bytes(degree: int, kept: int | None = None) -> int:
    """Bytes of one rounded ciphertext whose c0 is sent at `kept` positions (all: None)."""
    return 9 * degree + 8 * (degree if kept is None else kept)


def shifts(moduli: list[int]) -> tuple[int, int]:
    """(K0, K1): the low bits rounded away from c0 and c1 modulo Π moduli."""
    qbits = math.prod(moduli).bit_length()
    return qbits - C0_BITS, qbits - C1_BITS


def check_room(moduli: list[int], plain_modulus: int, degree: int, flood_bits: int) -> None:
    """Raise unless rounding + flooding (|flood| < 2^(flood_bits+1)) stay below Δ/2 in
    the worst case."""
    if not moduli or max(moduli) >= 1 << 60:
        raise ValueError("compact returns need return-level primes below 2^60")
    Q = math.prod(moduli)
    k0, k1 = shifts(moduli)
    if k1 < 1 or (1 << Q.bit_length()) - (1 << k0) < Q:
        raise ValueError("compact returns need a return modulus just below a power of two")
    worst = 2 ** (k0 - 1) + degree * 2 ** (k1 - 1) + 2 ** (flood_bits + 1)
    if worst >= (Q // plain_modulus) / 2:
        raise ValueError("rounded returns would not decrypt: too little noise room")


def mul_wide(a: int, b: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """(hi, lo) of the 128-bit products a·b, for a < 2^64 and b < 2^64 (uint64 exact)."""
    a0, a1 = U64(a & 0xFFFFFFFF), U64(a >> 32)
    b0, b1 = b & _M32, b >> U64(32)
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> U64(32)) + (p01 & _M32) + (p10 & _M32)
    lo = (p00 & _M32) | (mid << U64(32))
    hi = p11 + (p01 >> U64(32)) + (p10 >> U64(32)) + (mid >> U64(32))
    return hi, lo


def _mul_add(limbs: list[NDArray[np.uint64]], c: int, d: NDArray[np.uint64]) -> list[NDArray]:
    """The multi-limb integer limbs·c + d (c < 2^64, d uint64), one limb longer."""
    out, carry = [], d.copy()
    for limb in limbs:
        hi, lo = mul_wide(c, limb)
        s = lo + carry
        out.append(s)
        carry = hi + (s < lo).astype(U64)  # hi < 2^64 − 1: no overflow
    out.append(carry)
    return out


def _integers(res: NDArray[np.uint64], moduli: list[int]) -> list[NDArray[np.uint64]]:
    """Little-endian uint64 limbs of x in [0, Π moduli) with x ≡ res[j] mod moduli[j]
    (Garner's mixed radix, then Horner in multi-limb arithmetic)."""
    digits: list[NDArray[np.uint64]] = []
    for j, q in enumerate(moduli):
        t = res[j] % U64(q)
        for i, v in enumerate(digits):
            t = _mulmod_const(submod(t, v % U64(q), q), pow(moduli[i], -1, q), q)
        digits.append(t)
    limbs = [digits[-1]]
    for i in range(len(moduli) - 2, -1, -1):
        limbs = _mul_add(limbs, moduli[i], digits[i])
    return limbs


def _round_shift(limbs: list[NDArray[np.uint64]], k: int) -> tuple[NDArray, NDArray]:
    """(hi, lo) 64-bit words of round(x / 2^k) (the bits from k up), x given by limbs."""
    limbs = list(limbs) + [np.zeros_like(limbs[0])] * 2
    w, b = divmod(k - 1, 64)  # add 2^(k−1): bit b of limb w
    add = U64(1 << b)
    for i in range(w, len(limbs)):
        s = limbs[i] + add
        add = (s < limbs[i]).astype(U64)
        limbs[i] = s
    w, b = divmod(k, 64)

    def word(i: int) -> NDArray[np.uint64]:
        if b == 0:
            return limbs[i]
        return (limbs[i] >> U64(b)) | (limbs[i + 1] << U64(64 - b))

    return word(w + 1), word(w)


def pack(
    data: NDArray[np.uint64], moduli: list[int], keep: NDArray[np.int64] | None = None
) -> bytes:
    """(2, L, N) RNS residues of (c0, c1) → the rounded wire form (`compact_bytes`):
    c0 at the coefficient positions `keep` only (None: all), c1 whole."""
    k0, k1 = shifts(moduli)
    c0 = data[0] if keep is None else data[0][:, keep]
    hi0, lo0 = _round_shift(_integers(c0, moduli), k0)
    hi1, lo1 = _round_shift(_integers(data[1], moduli), k1)
    # x < Q ≤ 2^(K0+64) − 2^K0 (`check_room`) keeps round(x/2^K0) below 2^64
    assert not hi0.any() and not (hi1 >> U64(8)).any()
    return lo0.tobytes() + lo1.tobytes() + hi1.astype(np.uint8).tobytes()


def _from_top(lo: NDArray[np.uint64], hi: NDArray[np.uint64], k: int, q: int) -> NDArray:
    """(hi·2^64 + lo)·2^k mod q."""
    a = _mulmod_const(lo % U64(q), pow(2, k, q), q)
    if not hi.any():
        return a
    return addmod(a, _mulmod_const(hi % U64(q), pow(2, k + 64, q), q), q)


def unpack(
    raw: bytes, moduli: list[int], degree: int, keep: NDArray[np.int64] | None = None
) -> NDArray[np.uint64]:
    """The rounded wire form → (2, L, N) RNS residues of (c0', c1') (multiples of 2^K);
    c0 is zero outside `keep` (the positions `pack` was given)."""
    n = degree
    k = n if keep is None else len(keep)
    if len(raw) != compact_bytes(n, k):
        raise ValueError(f"result ciphertext has {len(raw)} bytes, expected {compact_bytes(n, k)}")
    k0, k1 = shifts(moduli)
    y0 = np.frombuffer(raw, dtype="<u8", count=k).astype(U64)
    y1 = np.frombuffer(raw, dtype="<u8", count=n, offset=8 * k).astype(U64)
    y1h = np.frombuffer(raw, dtype=np.uint8, count=n, offset=8 * (k + n)).astype(U64)
    zero = np.zeros_like(y0)
    out = np.zeros((2, len(moduli), n), dtype=U64)
    for j, q in enumerate(moduli):
        if keep is None:
            out[0, j] = _from_top(y0, zero, k0, q)
        else:
            out[0, j, keep] = _from_top(y0, zero, k0, q)
        out[1, j] = _from_top(y1, y1h, k1, q)
    return out
