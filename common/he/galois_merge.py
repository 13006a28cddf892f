"""Merging sparse coefficient-packed returns into one ciphertext with Galois automorphisms.

A coefficient-packed product (`common.he.packing`) is useful at mb·nb of its N
coefficients, i·kb·nb + j·kb + kb − 1: once multiplied by X^−(kb−1), at the multiples of
kb (the "lattice"). With few rows (the demo's 16) a return is mostly c1, which the
client needs in full to decrypt even one coefficient, so bytes and per-ciphertext work
(re-randomising, flooding, rounding, decrypting) are paid for ≈ 1/kb of useful data.

Chen–Dai–Kim–Song's PackLWEs step (ePrint 2020/015, Alg. 2) merges two ciphertexts
E, O whose data lie on the multiples of 2h into one with E's data on the multiples
of 2h and O's on the odd multiples of h, at the cost of one automorphism
ψ: X ↦ X^(N/h + 1), which fixes the multiples of 2h and negates the odd multiples of h:

    (E + X^h·O) + ψ(E − X^h·O)  =  2·E + 2·X^h·O  on the lattice of h,

and whose other coefficients (the products' cross terms) cancel on that lattice or
stay off it. A binary tree over a group of G = 2^g returns with lattice kb (a power of
two) costs G − 1 automorphisms and puts input j's lattice point p at p + j·kb/G,
multiplied by 2^(number of merges on its path) (`merge_layout`). An absent input
(None) costs nothing: its partner is only shifted.

Cost per merge: one key switch (one Galois key per level of the tree, sent once per
session by the client), one monomial product and three additions. Key switching adds
noise that depends on the products (the coefficient modulus' last, 17-bit prime is the
special prime): `merge_noise_bits` bounds it. Merged at the return level that noise
needs a flood the return level cannot hold, so `he_matmul` merges at the first level
and switches down, which divides it by the dropped modulus
(`CrtBfvParams.noise_bits(…, merges=)`).
"""

from __future__ import annotations

import math

import numpy as np
import tenseal.sealapi as seal
from numpy.typing import NDArray

from common.he.packing import Blocking


def merge_levels(degree: int, lattice: int, group: int) -> list[int]:
    """The tree levels ℓ (ψ_ℓ: X ↦ X^(2^ℓ + 1), shift N/2^ℓ) that merge `group` inputs
    on the multiples of `lattice`, from the leaves to the root."""
    for v, name in ((degree, "degree"), (lattice, "lattice"), (group, "group")):
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two, not {v}")
    if group > lattice or lattice > degree:
        raise ValueError("need group ≤ lattice ≤ degree")
    a = int(math.log2(degree // lattice))
    return list(range(a + 1, a + int(math.log2(group)) + 1))


def galois_elements(degree: int, lattice: int, group: int) -> list[int]:
    """The Galois elements (2^ℓ + 1) whose keys `merge` needs."""
    return [(1 << lvl) + 1 for lvl in merge_levels(degree, lattice, group)]


def merge_layout(
    present: list[bool], degree: int, lattice: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(offset, log2 scale) per input of `merge`: input j's value at lattice point p
    ends at coefficient p + offset[j], multiplied by 2^scale[j] (−1 for an absent input).
    Public: both parties compute it from the group's shape."""
    group = 1 << max(0, math.ceil(math.log2(max(1, len(present)))))
    merge_levels(degree, lattice, group)  # validates the shape
    step = lattice // group
    offsets = np.arange(len(present), dtype=np.int64) * step
    scales = np.full(len(present), -1, dtype=np.int64)

    def walk(idx: list[int]) -> bool:
        """Fill `scales` for the inputs `idx` (one subtree); return whether any is present."""
        if len(idx) == 1:
            j = idx[0]
            if j < len(present) and present[j]:
                scales[j] = 0
                return True
            return False
        evens, odds = walk(idx[0::2]), walk(idx[1::2])
        if evens and odds:
            for j in idx:
                if j < len(present) and scales[j] >= 0:
                    scales[j] += 1
        return evens or odds

    walk(list(range(group)))
    return offsets, scales


class Merger:
    """`merge` under one prime's context: its evaluator, the client's Galois keys, and
    the monomials X^h as plaintexts (made once each)."""

    def __init__(self, context: object, evaluator: object, keys: object, degree: int) -> None:
        self.context, self.evaluator, self.keys, self.degree = context, evaluator, keys, degree
        self._monomials: dict[int, object] = {}

    def _monomial(self, h: int) -> object:
        if h not in self._monomials:
            self._monomials[h] = seal.Plaintext(f"1x^{h}")
        return self._monomials[h]

    def merge(self, cts: list[object | None], lattice: int) -> object | None:
        """One ciphertext holding every input's lattice data (`merge_layout`), from
        ciphertexts in coefficient form at one level whose data lie on the multiples of
        `lattice`; None for an absent input, None if all are. Inputs are consumed.
        Cost: one key switch per pair of present subtrees (≤ len(cts) − 1)."""
        group = 1 << max(0, math.ceil(math.log2(max(1, len(cts)))))
        levels = merge_levels(self.degree, lattice, group)
        padded = list(cts) + [None] * (group - len(cts))
        return self._tree(padded, levels)

    def _tree(self, cts: list[object | None], levels: list[int]) -> object | None:
        if len(cts) == 1:
            return cts[0]
        lvl = levels[-1]
        even, odd = self._tree(cts[0::2], levels[:-1]), self._tree(cts[1::2], levels[:-1])
        if odd is None:
            return even
        ev = self.evaluator
        shifted = seal.Ciphertext()
        ev.multiply_plain(odd, self._monomial(self.degree >> lvl), shifted)
        if even is None:
            return shifted  # O's data moved to its place; its lattice partner is absent
        diff = seal.Ciphertext()
        ev.sub(even, shifted, diff)
        ev.add_inplace(even, shifted)
        ev.apply_galois_inplace(diff, (1 << lvl) + 1, self.keys)
        ev.add_inplace(even, diff)
        return even


def merge_noise_bits(
    noise_bits: float, merges: int, moduli_bits: list[int], special_bits: int, degree: int
) -> float:
    """log2 of a worst-case bound on the noise after `merges` tree levels, from inputs
    whose noise is below 2^noise_bits: each level doubles the noise and adds one key
    switch's, which is below Σ_i N·q_i·B/P + N (the RNS digits c mod q_i times the
    key's errors, |e| ≤ B = 19 (6σ, SEAL's clipped normal), divided by the special
    prime P, plus the rounding of that division by the ternary secret)."""
    ks = sum(degree * 2.0**qb * 19 for qb in moduli_bits) / 2.0 ** (special_bits - 1) + degree
    total = 2.0**noise_bits
    for _ in range(merges):
        total = 2 * total + ks
    return math.log2(total)


def group_layout(blk: Blocking, count: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """For a merged group of `count` consecutive block columns of the coefficient
    packing `blk` whose weights were encoded times X^−(kb−1) (`shift_rhs`): (positions,
    log2 scales). positions[j] (mb·nb, in `Blocking.output_index` order) are where
    column j's outputs lie in the merged ciphertext, multiplied by 2^scales[j]."""
    offsets, scales = merge_layout([True] * count, blk.degree, blk.kb)
    base = blk.output_index().ravel() - (blk.kb - 1)
    return base[None, :] + offsets[:, None], scales


def group_keep(
    blk: Blocking, a: int, cols: list[int], wanted: NDArray[np.bool_] | None = None
) -> NDArray[np.int64]:
    """Sorted positions of a merged return (row block a, block columns `cols`) that carry
    an output the client needs (`Blocking.keep`, moved by `group_layout`). Public."""
    pos, _ = group_layout(blk, len(cols))
    index = blk.output_index().ravel()
    parts = []
    for j, c in enumerate(cols):
        kept = blk.keep(a, c, wanted)
        parts.append(pos[j][np.searchsorted(index, kept)] if kept.size else kept)
    return np.sort(np.concatenate(parts)).astype(np.int64)


def shift_rhs(enc: NDArray[np.int64], kb: int) -> NDArray[np.int64]:
    """Weight block coefficients (…, N) times X^−(kb−1) in Z[X]/(X^N + 1), so that the
    products' outputs lie on the multiples of kb (the merge's lattice): a negacyclic
    rotation, exact for signed integers."""
    s = kb - 1
    out = np.roll(enc, -s, axis=-1)
    if s:
        out[..., -s:] *= -1
    return out
