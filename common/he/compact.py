"""Returned ciphertexts with their low bits rounded away (17 instead of 32 bytes per
coefficient).

A returned BFV ciphertext (c0, c1) lives modulo Q = q0·q1 (two 60-bit primes, the
return level). Its low bits carry only noise: decryption computes c0 + c1·s mod Q and
is correct while the total noise stays below Δ/2 = Q/(2t) ≈ 2^61 (t < 2^58). So the
server sends c0 rounded to a multiple of 2^K0 and c1 to a multiple of 2^K1, i.e. the
top 120 − K bits of each coefficient, and the client multiplies back.

Worst-case bound (not a probabilistic one): the rounding adds |e0| ≤ 2^(K0−1) from c0
and |Σ_j s_j·e1_j| ≤ N·2^(K1−1) from c1 (ternary s, N = 8192 = 2^13). With K0 = 56 and
K1 = 48: ≤ 2^55 + 2^60, plus the flooded noise (< 2^53, `CrtBfvParams.flood_bits`),
stays below 2^61: decryption is always correct. `check_room` enforces this for the
actual parameters. Rounding is a function of the flooded ciphertext only, so it
reveals nothing more than the ciphertext it replaces.

Wire layout per ciphertext: c0 as N uint64 (bits 56..119), then c1 as N uint64
(bits 48..111) and N uint8 (bits 112..119): 17·N bytes.

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

from common.he.crt import mulmod_const as _mulmod_const
from common.he.crt import submod

U64 = np.uint64
K0, K1 = 56, 48  # low bits dropped from c0 and c1
_M32 = U64(0xFFFFFFFF)


def compact_bytes(degree: int, kept: int | None = None) -> int:
    """Bytes of one rounded ciphertext whose c0 is sent at `kept` positions (all: None)."""
    return 9 * degree + 8 * (degree if kept is None else kept)


def check_room(moduli: list[int], plain_modulus: int, degree: int, flood_bits: int) -> None:
    """Raise unless rounding + flooding stay below Δ/2 in the worst case."""
    if len(moduli) != 2 or max(moduli) >= 1 << 60:
        raise ValueError("compact returns need a two-prime return level below 2^60")
    Q = math.prod(moduli)
    if Q >= 1 << 120:
        raise ValueError("return modulus must be below 2^120")
    worst = 2 ** (K0 - 1) + degree * 2 ** (K1 - 1) + 2 ** (flood_bits + 1)
    if worst >= (Q // plain_modulus) / 2:
        raise ValueError("rounded returns would not decrypt: too little noise room")


def _mul_wide(a: int, b: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """(hi, lo) of the 128-bit products a·b, for a < 2^64 and b < 2^64 (uint64 exact)."""
    a0, a1 = U64(a & 0xFFFFFFFF), U64(a >> 32)
    b0, b1 = b & _M32, b >> U64(32)
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> U64(32)) + (p01 & _M32) + (p10 & _M32)
    lo = (p00 & _M32) | (mid << U64(32))
    hi = p11 + (p01 >> U64(32)) + (p10 >> U64(32)) + (mid >> U64(32))
    return hi, lo


def _limbs_mod(limbs: list[NDArray[np.uint64]], q: int) -> NDArray[np.uint64]:
    """(limbs[0] + limbs[1]·2^64) mod q."""
    lo = limbs[0] % U64(q)
    s = lo + _mulmod_const(limbs[1], pow(2, 64, q), q)  # < 2q < 2^61
    return np.where(s >= U64(q), s - U64(q), s)


def _integers(res: NDArray[np.uint64], q0: int, q1: int) -> tuple[NDArray, NDArray]:
    """(hi, lo) limbs of x in [0, q0·q1) with x ≡ res[0] mod q0, x ≡ res[1] mod q1."""
    r0, r1 = res[0], res[1]
    u = _mulmod_const(submod(r1, r0 % U64(q1), q1), pow(q0, -1, q1), q1)  # x = r0 + q0·u
    hi, lo = _mul_wide(q0, u)
    lo2 = lo + r0
    hi = hi + (lo2 < lo).astype(U64)
    return hi, lo2


def _round_shift(hi: NDArray, lo: NDArray, k: int) -> tuple[NDArray, NDArray]:
    """(hi, lo) of round(x / 2^k) for x = hi·2^64 + lo < 2^120, 0 < k < 64."""
    half = U64(1 << (k - 1))
    lo2 = lo + half
    hi = hi + (lo2 < lo).astype(U64)
    return hi >> U64(k), (hi << U64(64 - k)) | (lo2 >> U64(k))


def pack(
    data: NDArray[np.uint64], moduli: list[int], keep: NDArray[np.int64] | None = None
) -> bytes:
    """(2, 2, N) RNS residues of (c0, c1) → the rounded wire form (`compact_bytes`):
    c0 at the coefficient positions `keep` only (None: all), c1 whole."""
    q0, q1 = moduli
    c0 = data[0] if keep is None else data[0][:, keep]
    hi0, lo0 = _round_shift(*_integers(c0, q0, q1), K0)
    hi1, lo1 = _round_shift(*_integers(data[1], q0, q1), K1)
    # c0: x < 2^120 and Q ≤ 2^120 − 2^64 keep round(x/2^56) below 2^64 (hi0 is 0)
    assert not hi0.any()
    return lo0.tobytes() + lo1.tobytes() + hi1.astype(np.uint8).tobytes()


def unpack(
    raw: bytes, moduli: list[int], degree: int, keep: NDArray[np.int64] | None = None
) -> NDArray[np.uint64]:
    """The rounded wire form → (2, 2, N) RNS residues of (c0', c1') (multiples of 2^K);
    c0 is zero outside `keep` (the positions `pack` was given)."""
    n = degree
    k = n if keep is None else len(keep)
    if len(raw) != compact_bytes(n, k):
        raise ValueError(f"result ciphertext has {len(raw)} bytes, expected {compact_bytes(n, k)}")
    y0 = np.frombuffer(raw, dtype="<u8", count=k).astype(U64)
    y1 = np.frombuffer(raw, dtype="<u8", count=n, offset=8 * k).astype(U64)
    y1h = np.frombuffer(raw, dtype=np.uint8, count=n, offset=8 * (k + n)).astype(U64)
    # x0 = y0·2^56, x1 = (y1h·2^64 + y1)·2^48, as 64-bit limbs
    x0 = [y0 << U64(K0), y0 >> U64(64 - K0)]
    x1 = [y1 << U64(K1), (y1 >> U64(64 - K1)) | (y1h << U64(K1))]
    out = np.zeros((2, 2, n), dtype=U64)
    for j, q in enumerate(moduli):
        if keep is None:
            out[0, j] = _limbs_mod(x0, q)
        else:
            out[0, j, keep] = _limbs_mod(x0, q)
        out[1, j] = _limbs_mod(x1, q)
    return out
