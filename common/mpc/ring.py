"""The ring Z_{2^64} (numpy uint64, wrap-around is free) and fixed-point encoding.

Pure functions only: no communication, no randomness source of their own (callers pass a
`common.prg.SecureRng`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from common.prg import SecureRng, require_secure

RING_BITS = 64
U64 = np.uint64
Ring = NDArray[np.uint64]

# float64 represents every integer of magnitude < 2^53 exactly; limb products summed in
# BLAS must stay below this bound to be exact.
_EXACT_FLOAT_BITS = 53


def new_rng(seed: int | bytes | None = None) -> SecureRng:
    """A cryptographic generator keyed from `os.urandom` (a fixed `seed` is for tests and
    the test-only dealer)."""
    return SecureRng(seed)


def random_ring(rng: SecureRng, shape: tuple[int, ...] | int) -> Ring:
    """Uniform elements of Z_{2^64} from a `SecureRng` (anything else raises
    `InsecureRandomnessError`: every caller draws shares or masks)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = math.prod(shape)
    return require_secure(rng, "random_ring").words(n).reshape(shape)


def to_signed(x: Ring) -> NDArray[np.int64]:
    """Two's-complement view: the representative in [-2^63, 2^63)."""
    return np.asarray(x).view(np.int64)


def from_signed(x: NDArray[np.integer]) -> Ring:
    return np.asarray(x, dtype=np.int64).view(U64)


# Fractional bits of the fixed-point encoding. 13, not 16: chosen when truncation was
# local, which fails with probability |v|/2^64 for a product v at scale 2^(2f) (a
# MiniLM forward truncates ~4·10^7 values per text, many of order 10 in the Newton
# iterations; at f = 16 that was ~2% of texts with a catastrophic error, at f = 13
# ~3·10^-4, while the logits move by ~1e-2: docs/ACCURACY.md, "Fixed-point precision").
# Exact truncation (the default) no longer depends on it; f stays 13 for both policies.
FRAC_BITS = 13


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point encoding with `frac_bits` fractional bits in Z_{2^64}.

    A real v is encoded as round(v · 2^f) mod 2^64; decoding reads the signed
    representative. Encodable range: |v| < 2^(63-f). `exact_trunc`: how shared products
    are divided by 2^f (`Mpc.trunc`): exactly (default; one round and a wrap
    correlation per truncation) or by SecureML local truncation (no round; fails with
    probability |v|/2^64 per value). Both parties must use the same (the plans differ
    otherwise).
    """

    frac_bits: int = FRAC_BITS
    exact_trunc: bool = True

    def __post_init__(self) -> None:
        if not 8 <= self.frac_bits <= 30:
            raise ValueError(f"frac_bits must be in [8, 30], got {self.frac_bits}")

    @property
    def scale(self) -> float:
        return float(1 << self.frac_bits)

    @property
    def max_abs(self) -> float:
        return float(2 ** (RING_BITS - 1 - self.frac_bits))

    def encode(self, v: NDArray[np.floating] | float) -> Ring:
        """Round to the nearest multiple of 2^-f; raise if out of the encodable range."""
        a = np.asarray(v, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError("cannot encode NaN or infinity")
        if a.size and np.abs(a).max() >= self.max_abs:
            raise ValueError(f"value out of fixed-point range ±{self.max_abs:g}")
        return from_signed(np.rint(a * self.scale).astype(np.int64))

    def encode_int(self, v: NDArray[np.floating] | float) -> NDArray[np.int64]:
        """Signed integer encoding (for public operands kept as int64)."""
        return to_signed(self.encode(v))

    def decode(self, x: Ring) -> NDArray[np.float64]:
        return to_signed(x).astype(np.float64) / self.scale


def public_const_extra_bits(c: NDArray | float, f: int) -> int:
    """Fractional bits beyond f (negative: fewer) for encoding a public constant c.

    A constant below 1 (e.g. 1/768 for a mean) gets up to f extra bits so that it keeps
    ~f significant bits. A scalar of 2 or more gets fewer, keeping f + 1 significant
    bits, so that x·c before its truncation is about |x|·2^(2f) rather than
    |x|·|c|·2^(2f): local truncation fails with probability proportional to that size
    (see `trunc_share`). Arrays keep f bits (their small entries would lose precision).
    """
    cmax = float(np.max(np.abs(c))) if np.size(c) else 0.0
    if cmax == 0:
        return 0
    if cmax < 1:
        return min(f, math.ceil(-math.log2(cmax)))
    if np.size(c) == 1 and cmax >= 2:
        return -min(f, math.floor(math.log2(cmax)))
    return 0


def trunc_share(x: Ring, bits: int, party: int) -> Ring:
    """SecureML local truncation of one party's share by `bits` (no communication).

    Party 0 shifts its signed share right, party 1 shifts the negation of its share and
    negates back. If the shared value v satisfies |v| < 2^l, the result is
    floor(v / 2^bits) + {0, 1} except with probability < 2^(l + 1 - 64), in which case
    it is off by about 2^(64 - bits) (see docs/SECURITY.md).
    """
    s = to_signed(x)
    if party == 0:
        return from_signed(s >> bits)
    return from_signed(-((-s) >> bits))


def wrap_local(
    x: Ring, bits: int, party: int, ring_bits: int = RING_BITS
) -> tuple[Ring, NDArray[np.uint8]]:
    """The local half of an exact division by 2^bits of a value shared in Z_2^ring_bits.

    Party 0 adds 2^(ring_bits−2) to its share, so that the shared value v' = v + 2^(m−2)
    lies in [0, 2^(m−1)) whenever |v| < 2^(m−2) (m = ring_bits). Read as unsigned, the
    two shares then sum to v' + w·2^m with the wrap bit w = msb(x_0') ∨ msb(x_1'): if
    they wrapped, one of them is ≥ 2^(m−1); if not, both are below v' < 2^(m−1).
    Party 0 rounds its share down, party 1 up, so that the two sum to ⌊v'/2^bits⌋ + w·
    2^(m−bits) + {0, 1}, exact when 2^bits divides v (as `trunc_share`: 0 stays 0).
    Returns (x_i' shifted, msb(x_i')); `wrap_finish` applies a share of w.
    """
    xs = np.asarray(x, dtype=U64)
    fresh = False  # whether xs is our own buffer (then it is shifted in place)
    if ring_bits < RING_BITS:
        xs, fresh = xs & U64((1 << ring_bits) - 1), True
    if party == 0:
        xs, fresh = xs + U64(1 << (ring_bits - 2)), True
        if ring_bits < RING_BITS:
            xs &= U64((1 << ring_bits) - 1)
    msb = top_bits(xs, ring_bits)
    if not bits:
        return (xs if fresh else xs.copy()), msb
    if party == 1:  # round up: + 1 where the dropped bits are not all zero
        low = xs & U64((1 << bits) - 1)
        up = low != 0
        shifted = np.right_shift(xs, U64(bits), out=low)
        shifted += up
    else:
        shifted = np.right_shift(xs, U64(bits), out=xs if fresh else None)
    return shifted, msb


def top_bits(x: Ring, ring_bits: int = RING_BITS) -> NDArray[np.uint8]:
    """Bit ring_bits − 1 of each element, as uint8 0/1 (x's shape)."""
    x = np.ascontiguousarray(x, dtype=U64)
    if ring_bits == RING_BITS and sys.byteorder == "little":
        # the top byte of each little-endian word: a strided 1-byte read, no 8-byte pass
        return (x.reshape(-1).view(np.uint8)[7::8] >> np.uint8(7)).reshape(x.shape)
    return (x >> U64(ring_bits - 1)).astype(np.uint8) & np.uint8(1)


def wrap_finish(local: Ring, wrap: Ring, bits: int, party: int, ring_bits: int = RING_BITS) -> Ring:
    """Shares of ⌊v/2^bits⌋ + {0, 1} in Z_2^64 from `wrap_local`'s shifted share and
    this party's share of the wrap bit w (only w mod 2^(64−m+bits) matters):
    y_i = (x_i' >> bits) − w_i·2^(m−bits), and party 0 removes the offset. Works in
    place: `local` becomes the result and `wrap` is overwritten."""
    if ring_bits - bits < 64:
        local -= np.left_shift(wrap, U64(ring_bits - bits), out=wrap)
    if party == 0:
        local -= U64(1 << (ring_bits - 2 - bits))
    return local


def _limbs(x: Ring, width: int, count: int) -> list[NDArray[np.float64]]:
    mask = U64((1 << width) - 1)
    return [((x >> U64(width * i)) & mask).astype(np.float64) for i in range(count)]


def ring_matmul(a: Ring, b: Ring) -> Ring:
    """Exact (a @ b) mod 2^64 for uint64 matrices, through float64 BLAS.

    Both operands are split into limbs of w bits, w as wide as exactness allows: a limb
    product summed over k terms stays below 2^(2w + ⌈log2 k⌉) ≤ 2^53. Only limb pairs
    with w·(i + j) < 64 matter mod 2^64, one GEMM per limb of `a` against the
    concatenated limbs of `b`. Cost: 6 limb GEMMs for k ≤ 128 (w = 23: the attention
    products), 10 beyond (w ≥ 16, as four 16-bit limbs); k ≤ 2^21.
    """
    a = np.asarray(a, dtype=U64)
    b = np.asarray(b, dtype=U64)
    k = a.shape[-1]
    if k > 1 << 21:
        raise ValueError("inner dimension too large for the exact float64 path")
    width = min(32, (_EXACT_FLOAT_BITS - max(1, math.ceil(math.log2(max(k, 2))))) // 2)
    count = math.ceil(RING_BITS / width)
    al = _limbs(a, width, count)
    bl = _limbs(b, width, count)
    out = np.zeros(a.shape[:-1] + b.shape[-1:], dtype=U64)
    n = b.shape[-1]
    for i in range(count):
        js = [j for j in range(count) if width * (i + j) < RING_BITS]
        if not js:
            break
        bcat = bl[0] if len(js) == 1 else np.concatenate(bl[: len(js)], axis=-1)
        prod = (al[i] @ bcat).astype(np.int64).view(U64)
        for j in js:
            out += prod[..., j * n : (j + 1) * n] << U64(width * (i + j))
    return out


class PublicMatrix:
    """A signed integer matrix one party knows in the clear (the server's encoded
    weights), held ready for `ring_matmul_public`: its entries as float64 (exact while
    |w| < 2^52) and max |w|, computed once. Passing a plain int64 matrix instead costs a
    float64 copy and a max pass over the whole matrix per product — for a token step of
    SmolLM2, whose products have one row, that was most of the server's time."""

    __slots__ = ("floats", "max_abs")

    def __init__(self, floats: NDArray[np.float64], max_abs: int) -> None:
        self.floats = floats
        self.max_abs = max_abs

    @classmethod
    def of_ints(cls, w: NDArray[np.integer]) -> PublicMatrix:
        w = np.asarray(w, dtype=np.int64)
        floats = w.astype(np.float64)
        floats.setflags(write=False)
        return cls(floats, int(np.abs(w).max()) if w.size else 0)

    @classmethod
    def encode(cls, v: NDArray[np.floating], fxp: FixedPoint) -> PublicMatrix:
        """Real values encoded by `FixedPoint.encode_int` (its checks), held ready."""
        return cls.of_ints(fxp.encode_int(v))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.floats.shape

    @property
    def size(self) -> int:
        return self.floats.size

    def ints(self) -> NDArray[np.int64]:
        """The entries as int64 (a new array: for the HE offline phase's plaintexts)."""
        return self.floats.astype(np.int64)


def as_ints(w: NDArray[np.integer] | PublicMatrix) -> NDArray[np.int64]:
    """A public matrix's entries as int64, whichever form it is held in."""
    return w.ints() if isinstance(w, PublicMatrix) else np.asarray(w, dtype=np.int64)


class PublicMatrices:
    """One party's memo of its encoded public matrices, by site key: a model's weights
    are encoded once and reused by the planning run, the online phase and later
    sessions (SmolLM2: 135 M values, seconds per encoding). An entry serves only the
    very array object it was made from (identity, not value): a new matrix under an
    old key is encoded afresh. Safe to share between sessions' threads (a race only
    repeats an encoding)."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, int], tuple[NDArray, PublicMatrix]] = {}
        self._joined: dict[str, tuple[tuple[NDArray, ...], NDArray]] = {}

    def joined(self, key: str, parts: list[NDArray]) -> NDArray:
        """`parts` side by side (axis 1: linear layers sharing an input, as one), memoised
        by `key` while the parts are the same objects — so that its encoding is too."""
        if len(parts) == 1:
            return parts[0]
        hit = self._joined.get(key)
        if hit is not None:
            old, m = hit
            if len(old) == len(parts) and all(a is b for a, b in zip(old, parts, strict=True)):
                return m
        m = np.concatenate(parts, axis=1)
        self._joined[key] = (tuple(parts), m)
        return m

    def encode(self, key: str, v: NDArray[np.floating], fxp: FixedPoint) -> PublicMatrix:
        hit = self._memo.get((key, fxp.frac_bits))
        if hit is not None and hit[0] is v:
            return hit[1]
        m = PublicMatrix.encode(v, fxp)
        self._memo[(key, fxp.frac_bits)] = (v, m)
        return m

    def __len__(self) -> int:
        return len(self._memo)


def ring_matmul_public(x: Ring, w: NDArray[np.int64] | PublicMatrix) -> Ring:
    """Exact (x @ w) mod 2^64 where w is a public/clear signed integer matrix.

    x is cut into limbs just narrow enough that limb · w sums over k stay exact in
    float64; the limbs are stacked along rows so the whole product is one GEMM.
    Cost: ceil(64 / L) times a float64 GEMM, L = 52 - bits(max|w|) - ceil(log2 k).
    """
    x = np.asarray(x, dtype=U64)
    if not isinstance(w, PublicMatrix):
        w = PublicMatrix.of_ints(w)
    k = x.shape[-1]
    wmax = w.max_abs
    width = _EXACT_FLOAT_BITS - 1 - wmax.bit_length() - max(1, math.ceil(math.log2(max(k, 2))))
    if width < 4:
        raise ValueError("public operand too large for the exact float64 path")
    width = min(width, 32)
    count = math.ceil(RING_BITS / width)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    stacked = np.concatenate(_limbs(x2, width, count), axis=0)
    prod = stacked @ w.floats
    prod = prod.astype(np.int64).view(U64).reshape(count, x2.shape[0], w.shape[-1])
    out = prod[0].copy()
    for i in range(1, count):
        out += prod[i] << U64(width * i)
    return out.reshape(*lead, w.shape[-1])
