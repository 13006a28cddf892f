"""Coefficient packing of matrix products (Cheetah-style, no rotations, no Galois keys).

A block X (mb×kb) is encoded with X[i,l] at coefficient i·kb·nb + l, a block W (kb×nb)
with W[l,j] at j·kb + kb−1−l. In the negacyclic product the coefficient
i·kb·nb + j·kb + kb−1 is exactly Σ_l X[i,l]·W[l,j] when mb·kb·nb ≤ N; every other
coefficient holds cross terms and must be masked before it returns to the client.
Only the useful coefficients' c0 travels back (`Blocking.keep`, `common.he.compact`).
The product is commutative, so either operand may be the encrypted one: a matrix
triple's two cross terms X·W + X'·Y (X and Y encrypted, W and X' plaintexts, each in
its own side's layout) land on the same coefficients and return as one ciphertext.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Blocking:
    m: int
    k: int
    n: int
    mb: int
    kb: int
    nb: int
    degree: int

    @property
    def grid(self) -> tuple[int, int, int]:
        return (
            math.ceil(self.m / self.mb),
            math.ceil(self.k / self.kb),
            math.ceil(self.n / self.nb),
        )

    @property
    def uploads(self) -> int:
        g = self.grid
        return g[0] * g[1]

    @property
    def returns(self) -> int:
        g = self.grid
        return g[0] * g[2]

    @property
    def products(self) -> int:
        return math.prod(self.grid)

    def encode_lhs(self, x: NDArray) -> NDArray:
        """(Mb, Kb, N) coefficient arrays of the left operand's blocks."""
        Mb, Kb, _ = self.grid
        xp = np.zeros((Mb * self.mb, Kb * self.kb), dtype=x.dtype)
        xp[: self.m, : self.k] = x
        blocks = xp.reshape(Mb, self.mb, Kb, self.kb).transpose(0, 2, 1, 3)
        out = np.zeros((Mb, Kb, self.degree), dtype=x.dtype)
        i, l = np.meshgrid(np.arange(self.mb), np.arange(self.kb), indexing="ij")
        out[:, :, (i * self.kb * self.nb + l).ravel()] = blocks.reshape(Mb, Kb, -1)
        return out

    def encode_rhs(self, w: NDArray, col: int | None = None) -> NDArray:
        """(Kb, Nb, N) coefficient arrays of the right operand's blocks, or (Kb, N) for
        the one block column `col` (to bound memory for large weights)."""
        _, Kb, Nb = self.grid
        wp = np.zeros((Kb * self.kb, Nb * self.nb), dtype=w.dtype)
        wp[: self.k, : self.n] = w
        if col is not None:
            wp = wp[:, col * self.nb : (col + 1) * self.nb]
            Nb = 1
        blocks = wp.reshape(Kb, self.kb, Nb, self.nb).transpose(0, 2, 1, 3)
        out = np.zeros((Kb, Nb, self.degree), dtype=w.dtype)
        l, j = np.meshgrid(np.arange(self.kb), np.arange(self.nb), indexing="ij")
        out[:, :, (j * self.kb + self.kb - 1 - l).ravel()] = blocks.reshape(Kb, Nb, -1)
        return out[:, 0] if col is not None else out

    def output_index(self) -> NDArray[np.int64]:
        """Coefficient index of result (i, j) inside an output block, shape (mb, nb)."""
        i, j = np.meshgrid(np.arange(self.mb), np.arange(self.nb), indexing="ij")
        return i * self.kb * self.nb + j * self.kb + self.kb - 1

    def keep(self, a: int, c: int, wanted: NDArray[np.bool_] | None = None) -> NDArray[np.int64]:
        """Sorted coefficient positions of output block (a, c) that carry a result the
        client needs: inside the (m, n) product (not padding) and, if given, where the
        (m, n) boolean `wanted` is set. Public: both parties compute it."""
        return self.output_index().ravel()[self.keep_index(a, c, wanted)]

    def keep_index(
        self, a: int, c: int, wanted: NDArray[np.bool_] | None = None
    ) -> NDArray[np.int64]:
        """`keep`'s entries as indices into the block's mb·nb outputs (row-major, the
        order of `output_index`, which increases along it)."""
        rows = np.arange(a * self.mb, (a + 1) * self.mb) < self.m
        cols = np.arange(c * self.nb, (c + 1) * self.nb) < self.n
        sel = rows[:, None] & cols[None, :]
        if wanted is not None:
            w = np.zeros((self.mb, self.nb), dtype=bool)
            blk = wanted[a * self.mb : (a + 1) * self.mb, c * self.nb : (c + 1) * self.nb]
            w[: blk.shape[0], : blk.shape[1]] = blk
            sel &= w
        return np.flatnonzero(sel).astype(np.int64)

    def decode_output(self, coeffs: NDArray) -> NDArray:
        """(Mb, Nb, N) output coefficients → the (m, n) product."""
        return self.decode_values(coeffs[:, :, self.output_index().ravel()])

    def decode_values(self, vals: NDArray) -> NDArray:
        """(Mb, Nb, mb·nb) block outputs (in `output_index` order) → the (m, n) product."""
        Mb, _, Nb = self.grid
        blocks = vals.reshape(Mb, Nb, self.mb, self.nb)
        full = blocks.transpose(0, 2, 1, 3).reshape(Mb * self.mb, Nb * self.nb)
        return full[: self.m, : self.n]


def diagonal_blocks(m: int, n: int, diag: tuple[int, int]) -> NDArray[np.bool_]:
    """The (m, n) `wanted` of a stack of products: diagonal blocks of dm×dn, m/dm of them."""
    dm, dn = diag
    if m % dm or n % dn or m // dm != n // dn:
        raise ValueError(f"({m}, {n}) is not a stack of {dm}×{dn} diagonal blocks")
    return np.kron(np.eye(m // dm, dtype=bool), np.ones((dm, dn), dtype=bool))


# What `choose_blocking` charges for one key switch of a merge (≈ 4.6 ms of HE CPU on
# this project's 2-core machine, about half an upload's encryption and loading): the
# trade between bytes and CPU when returns are merged.
KEY_SWITCH_BYTES = 50_000


@lru_cache(maxsize=256)
def choose_blocking(
    m: int,
    k: int,
    n: int,
    degree: int,
    up_bytes: int,
    down_bytes: int,
    cross: bool = False,
    merge: int = 1,
) -> Blocking:
    """The block shape that minimises bytes on the wire, then ct×pt products.

    `down_bytes` is a return's size without its useful coefficients: those (8 bytes
    each, `common.he.compact`) add up to the same m·n whatever the blocking.
    `cross`: both operands are uploaded (X·W + X'·Y with X and Y encrypted, the
    products' sum returned once): Kb·Nb more uploads and twice the products.
    Every output block counts as a return, even one that a caller's `wanted` leaves
    empty: an empty block still costs its mask and its decoding on both sides, so
    grids of many small mostly-empty blocks (fewer bytes for a stack of small
    products) cost far more CPU (measured: 8 × 18 tokens, docs/BENCHMARKS.md).
    `merge` > 1: returns are merged up to `merge` block columns at a time
    (`common.he.galois_merge`), which needs a power-of-two kb: only those are
    considered, a row block's returns count once per merged group, and each merge's
    key switch counts as `KEY_SWITCH_BYTES`: without it the chooser takes the fewest
    uploads and grids of 100–200 block columns, 4× the key switches (measured on the
    demo: 162 MB fewer bytes for 48 s more HE worker CPU, docs/BENCHMARKS.md)."""
    best: tuple[tuple[int, int], Blocking] | None = None
    for mb in range(1, min(m, degree) + 1):
        Mb = math.ceil(m / mb)
        if mb > 1 and math.ceil(m / (mb - 1)) == Mb:
            continue  # same grid as mb − 1 with more padding
        for kb in range(1, min(k, degree // mb) + 1):
            if merge > 1 and kb & (kb - 1):
                continue
            nb = min(n, degree // (mb * kb))
            b = Blocking(m, k, n, mb, kb, nb, degree)
            ups = b.uploads + (b.grid[1] * b.grid[2] if cross else 0)
            returns, switches = b.returns, 0
            if merge > 1:
                cols = b.grid[2]
                g = min(merge, kb, 1 << int(math.log2(cols)))
                returns = b.grid[0] * math.ceil(cols / g)
                switches = b.returns - returns
            wire = ups * up_bytes + returns * down_bytes + switches * KEY_SWITCH_BYTES
            cost = (wire, b.products * (2 if cross else 1))
            if best is None or cost < best[0]:
                best = (cost, b)
    assert best is not None
    return best[1]
