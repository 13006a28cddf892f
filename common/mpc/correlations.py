"""Correlated randomness: what a program needs (`Plan`) and what a party holds (`Pool`).

A program is planned by running it once against `PlanRecorder` (and a `NullChannel`),
which records every request in order; the offline phase then produces all of it in
full ciphertext batches, and the online phase consumes it from a `Pool` in the same
order.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from common.mpc.ring import U64, PublicMatrix, Ring, trunc_share
from common.mpc.roles import CLIENT

# A bit triple made by HE (`HeProvider._wraps`) is a one-time pad mod a plaintext prime
# p > 2^57, and comes out wrong when u·v + r leaves the centred range: probability 1/p.
# Each truncation under exact truncation consumes one (`Mpc.trunc_many`).
WRAP_TRIPLE_FAILURE = 2.0**-57


class PreprocessingError(RuntimeError):
    """The online phase asked for correlations the offline phase did not produce."""


@dataclass(frozen=True)
class LinearSpec:
    """A linear-layer mask: rows×k input times the server's k×n weight `key`."""

    key: str
    rows: int
    k: int
    n: int


@dataclass
class Plan:
    """How much of each correlation a program consumes (public: depends on shapes only)."""

    triples: int = 0
    squares: int = 0
    wraps: int = 0  # bit triples of the exact truncation (`Mpc.wrap_bits`)
    matmuls: list[tuple[int, ...]] = field(default_factory=list)  # (*batch, m, k, n)
    matmul_binds: list[tuple[Bind | None, Bind | None]] = field(default_factory=list)
    linears: list[LinearSpec] = field(default_factory=list)
    groups: list[GroupSpec] = field(default_factory=list)
    # Public bound 2^weight_bits on the server's encoded linear weights (None: the
    # provider's generic one); sizes the linear masks' CRT basis.
    weight_bits: int | None = None

    def describe(self) -> dict:
        return {
            "weight_bits": self.weight_bits,
            "triples": self.triples,
            "squares": self.squares,
            "wraps": self.wraps,
            "matmuls": [list(s) for s in self.matmuls],
            "matmul_binds": [[_desc(a), _desc(b)] for a, b in self.matmul_binds],
            "linears": [[s.key, s.rows, s.k, s.n] for s in self.linears],
            "groups": [g.describe() for g in self.groups],
        }

    def matmul_specs(self) -> list[tuple[tuple[int, ...], tuple[Bind | None, Bind | None]]]:
        binds = self.matmul_binds or [(None, None)] * len(self.matmuls)
        if len(binds) != len(self.matmuls):
            raise ValueError("matmul_binds must match matmuls")
        return list(zip(self.matmuls, binds, strict=True))

    def digest(self) -> bytes:
        """SHA-256 of the plan; the parties compare it before the offline phase."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).digest()


@dataclass
class LinearMask:
    """One party's part of a linear-layer mask. The client holds r; both hold a share of rW."""

    spec: LinearSpec
    share: Ring
    r: Ring | None = None


@dataclass(frozen=True)
class Bind:
    """A mask whose client share is the client's own share of a linear layer's output.

    After `Mpc.linear`, the client's share of the output is data-independent (it comes
    from the offline phase). A mask whose client share is that very share makes the
    client's part of the opening, x_c − A_c, zero: only the server sends (x_s − A_s,
    uniform to the client because A_s is). The mask's client share is the output share
    of linear `key` (rows × n), truncated by `bits` like `Mpc.linear` does, reshaped to
    `shape`, columns `cols` of the last axis, reshaped to `view`, axes permuted `perm`
    — the same layout steps the program applies to the output.
    """

    key: str
    bits: int
    shape: tuple[int, ...]
    cols: tuple[int, int]
    view: tuple[int, ...]
    perm: tuple[int, ...]

    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.view[i] for i in self.perm)

    def apply(self, raw: Ring) -> Ring:
        """The mask's client share from the client's raw (untruncated) output share."""
        t = trunc_share(raw, self.bits, CLIENT).reshape(self.shape)
        t = t[..., self.cols[0] : self.cols[1]].reshape(self.view)
        return np.ascontiguousarray(np.transpose(t, self.perm))

    def describe(self) -> list:
        return [self.key, self.bits, list(self.shape), list(self.cols), list(self.view),
                list(self.perm)]  # fmt: skip


def _desc(b: Bind | None) -> list | None:
    return None if b is None else b.describe()


@dataclass(frozen=True)
class GroupSpec:
    """Masks for values that are opened once and then multiplied with each other.

    `shapes[i]` is the shape of mask i (the value it will mask); `pairs` lists the
    products (i, j), i ≤ j, whose mask products are preprocessed. A pair's product has
    the broadcast shape of its two masks (a per-row value times a matrix, say).
    """

    shapes: tuple[tuple[int, ...], ...]
    pairs: tuple[tuple[int, int], ...]
    binds: tuple[Bind | None, ...] = ()  # per mask (empty: none bound); see `Bind`

    def __post_init__(self) -> None:
        k = len(self.shapes)
        if self.binds:
            if len(self.binds) != k:
                raise ValueError("binds must have one entry per mask")
            for shape, b in zip(self.shapes, self.binds, strict=True):
                if b is not None and b.out_shape() != shape:
                    raise ValueError(f"bound view {b.out_shape()} does not match mask {shape}")
        for i, j in self.pairs:
            if not 0 <= i <= j < k:
                raise ValueError(f"bad pair {(i, j)} for {k} masks")
            np.broadcast_shapes(self.shapes[i], self.shapes[j])
        if len(set(self.pairs)) != len(self.pairs):
            raise ValueError("duplicate pair")

    def pair_shape(self, i: int, j: int) -> tuple[int, ...]:
        return tuple(np.broadcast_shapes(self.shapes[i], self.shapes[j]))

    def elements(self) -> tuple[int, int, int]:
        """(mask elements, square elements, cross-product elements)."""
        sq = sum(int(np.prod(self.pair_shape(i, j))) for i, j in self.pairs if i == j)
        cross = sum(int(np.prod(self.pair_shape(i, j))) for i, j in self.pairs if i != j)
        return sum(int(np.prod(s)) for s in self.shapes), sq, cross

    def bind(self, i: int) -> Bind | None:
        return self.binds[i] if self.binds else None

    def describe(self) -> list:
        return [[list(s) for s in self.shapes], [list(p) for p in self.pairs],
                [_desc(b) for b in self.binds]]  # fmt: skip


@dataclass
class MaskGroup:
    """One party's shares of a group's masks and of their planned products."""

    spec: GroupSpec
    masks: list[Ring]
    products: dict[tuple[int, int], Ring]

    @classmethod
    def zeros(cls, spec: GroupSpec) -> MaskGroup:
        return cls(
            spec,
            [np.zeros(s, U64) for s in spec.shapes],
            {p: np.zeros(spec.pair_shape(*p), U64) for p in spec.pairs},
        )


class _Flat:
    """A flat buffer of element-wise correlations consumed front to back."""

    def __init__(self, arrays: tuple[Ring, ...]) -> None:
        self.arrays = arrays
        self.pos = 0

    def take(self, n: int, what: str) -> tuple[Ring, ...]:
        size = self.arrays[0].size if self.arrays else 0
        if self.pos + n > size:
            raise PreprocessingError(f"out of {what}: need {n}, {size - self.pos} left")
        out = tuple(a[self.pos : self.pos + n] for a in self.arrays)
        self.pos += n
        return out


class Pool:
    """One party's correlated randomness for one run of a planned program."""

    def __init__(
        self,
        triples: tuple[Ring, Ring, Ring],
        squares: tuple[Ring, Ring],
        matmuls: list[tuple[Ring, Ring, Ring]],
        linears: list[LinearMask],
        groups: list[MaskGroup] | None = None,
        wraps: tuple[NDArray[np.uint8], Ring] | None = None,
    ) -> None:
        self._groups = deque(groups or [])
        self._triples = _Flat(triples)
        self._squares = _Flat(squares)
        self._wraps = _Flat(wraps or (np.zeros(0, np.uint8), np.zeros(0, U64)))
        self._matmuls = deque(matmuls)
        self._linears = deque(linears)

    def triples(self, n: int) -> tuple[Ring, Ring, Ring]:
        return self._triples.take(n, "Beaver triples")  # type: ignore[return-value]

    def squares(self, n: int) -> tuple[Ring, Ring]:
        return self._squares.take(n, "square pairs")  # type: ignore[return-value]

    def wraps(self, n: int) -> tuple[NDArray[np.uint8], Ring]:
        """n bit triples: this party's random bit and its share of u·v."""
        return self._wraps.take(n, "wrap bit triples")  # type: ignore[return-value]

    def matmul_triple(
        self, shape: tuple[int, ...], binds: tuple[Bind | None, Bind | None] = (None, None)
    ) -> tuple[Ring, Ring, Ring]:
        if not self._matmuls:
            raise PreprocessingError("out of matrix triples")
        a, b, c = self._matmuls.popleft()
        if a.shape[:-1] + b.shape[-1:] != c.shape or a.shape + b.shape[-1:] != shape:
            raise PreprocessingError(f"matrix triple shape mismatch: want {shape}")
        return a, b, c

    def linear_mask(
        self, spec: LinearSpec, weight: NDArray[np.int64] | PublicMatrix | None = None
    ) -> LinearMask:
        """The next linear mask (`weight` is ignored: it was used offline)."""
        if not self._linears:
            raise PreprocessingError("out of linear-layer masks")
        mask = self._linears.popleft()
        if mask.spec != spec:
            raise PreprocessingError(f"linear mask mismatch: want {spec}, have {mask.spec}")
        return mask

    def group(self, spec: GroupSpec) -> MaskGroup:
        if not self._groups:
            raise PreprocessingError("out of mask groups")
        g = self._groups.popleft()
        if g.spec != spec:
            raise PreprocessingError(f"mask group mismatch: want {spec}, have {g.spec}")
        return g

    def remaining(self) -> dict[str, int]:
        return {
            "triples": self._triples.arrays[0].size - self._triples.pos,
            "squares": self._squares.arrays[0].size - self._squares.pos,
            "wraps": self._wraps.arrays[0].size - self._wraps.pos,
            "matmuls": len(self._matmuls),
            "linears": len(self._linears),
            "groups": len(self._groups),
        }


class PlanRecorder:
    """A correlation source that records requests and hands out zeros (planning runs)."""

    def __init__(self) -> None:
        self.plan = Plan()
        self.weights: dict[str, NDArray[np.int64] | PublicMatrix] = {}

    def triples(self, n: int) -> tuple[Ring, Ring, Ring]:
        self.plan.triples += n
        z = np.zeros(n, dtype=U64)
        return z, z, z

    def squares(self, n: int) -> tuple[Ring, Ring]:
        self.plan.squares += n
        z = np.zeros(n, dtype=U64)
        return z, z

    def wraps(self, n: int) -> tuple[NDArray[np.uint8], Ring]:
        self.plan.wraps += n
        return np.zeros(n, np.uint8), np.zeros(n, dtype=U64)

    def matmul_triple(
        self, shape: tuple[int, ...], binds: tuple[Bind | None, Bind | None] = (None, None)
    ) -> tuple[Ring, Ring, Ring]:
        self.plan.matmuls.append(tuple(shape))
        self.plan.matmul_binds.append(binds)
        *batch, m, k, n = shape
        return (
            np.zeros((*batch, m, k), U64),
            np.zeros((*batch, k, n), U64),
            np.zeros((*batch, m, n), U64),
        )

    def group(self, spec: GroupSpec) -> MaskGroup:
        self.plan.groups.append(spec)
        return MaskGroup.zeros(spec)

    def linear_mask(
        self, spec: LinearSpec, weight: NDArray[np.int64] | PublicMatrix | None = None
    ) -> LinearMask:
        self.plan.linears.append(spec)
        if weight is not None:
            self.weights[spec.key] = weight
        return LinearMask(
            spec, np.zeros((spec.rows, spec.n), U64), np.zeros((spec.rows, spec.k), U64)
        )


class SegmentedRecorder:
    """A planning source that keeps one plan per segment (the channel's current layer
    label at each request), so that the offline phase can be produced and metered per
    layer. Segments are listed in order of first use."""

    def __init__(self, label_of: Callable[[], str]) -> None:
        self.label_of = label_of
        self.recorders: dict[str, PlanRecorder] = {}

    def _rec(self) -> PlanRecorder:
        return self.recorders.setdefault(self.label_of(), PlanRecorder())

    def triples(self, n: int) -> tuple[Ring, Ring, Ring]:
        return self._rec().triples(n)

    def squares(self, n: int) -> tuple[Ring, Ring]:
        return self._rec().squares(n)

    def wraps(self, n: int) -> tuple[NDArray[np.uint8], Ring]:
        return self._rec().wraps(n)

    def matmul_triple(
        self, shape: tuple[int, ...], binds: tuple[Bind | None, Bind | None] = (None, None)
    ) -> tuple[Ring, Ring, Ring]:
        return self._rec().matmul_triple(shape, binds)

    def linear_mask(
        self, spec: LinearSpec, weight: NDArray[np.int64] | PublicMatrix | None = None
    ) -> LinearMask:
        return self._rec().linear_mask(spec, weight)

    def group(self, spec: GroupSpec) -> MaskGroup:
        return self._rec().group(spec)


class SegmentedPool:
    """Per-segment pools; each request is served from the current segment's pool."""

    def __init__(self, pools: dict[str, Pool], label_of: Callable[[], str]) -> None:
        self.pools = pools
        self.label_of = label_of

    def _pool(self) -> Pool:
        label = self.label_of()
        if label not in self.pools:
            raise PreprocessingError(f"no correlations were prepared for segment {label!r}")
        return self.pools[label]

    def triples(self, n: int) -> tuple[Ring, Ring, Ring]:
        return self._pool().triples(n)

    def squares(self, n: int) -> tuple[Ring, Ring]:
        return self._pool().squares(n)

    def wraps(self, n: int) -> tuple[NDArray[np.uint8], Ring]:
        return self._pool().wraps(n)

    def matmul_triple(
        self, shape: tuple[int, ...], binds: tuple[Bind | None, Bind | None] = (None, None)
    ) -> tuple[Ring, Ring, Ring]:
        return self._pool().matmul_triple(shape, binds)

    def linear_mask(
        self, spec: LinearSpec, weight: NDArray[np.int64] | PublicMatrix | None = None
    ) -> LinearMask:
        return self._pool().linear_mask(spec, weight)

    def group(self, spec: GroupSpec) -> MaskGroup:
        return self._pool().group(spec)


def pool_arrays(pool: Pool) -> dict[str, Ring]:
    """Every array of `pool`, named by kind and position in plan order (for storage:
    `pool_from_arrays` with the same plan rebuilds it). The pool must be unused."""
    if pool._triples.pos or pool._squares.pos or pool._wraps.pos:
        raise PreprocessingError("a pool already in use cannot be stored")
    out: dict[str, Ring] = {}
    for i, a in enumerate(pool._triples.arrays):
        out[f"t{i}"] = a
    for i, a in enumerate(pool._squares.arrays):
        out[f"q{i}"] = a
    if pool._wraps.arrays[0].size:
        out["w0"], out["w1"] = pool._wraps.arrays
    for n, abc in enumerate(pool._matmuls):
        for i, a in enumerate(abc):
            out[f"m{n}.{i}"] = a
    for n, lm in enumerate(pool._linears):
        out[f"l{n}.s"] = lm.share
        if lm.r is not None:
            out[f"l{n}.r"] = lm.r
    for n, g in enumerate(pool._groups):
        for i, a in enumerate(g.masks):
            out[f"g{n}.m{i}"] = a
        for i, p in enumerate(g.spec.pairs):
            out[f"g{n}.p{i}"] = g.products[p]
    return {
        k: np.ascontiguousarray(v, dtype=np.uint8 if k == "w0" else U64) for k, v in out.items()
    }


def pool_from_arrays(plan: Plan, arrays: dict[str, Ring]) -> Pool:
    """The pool `pool_arrays` stored, checked against `plan` (every array present with
    its planned shape, nothing else)."""
    used: set[str] = set()

    def get(
        name: str, shape: tuple[int, ...] | None = None, optional: bool = False, dtype=U64
    ) -> Ring:
        if name not in arrays:
            if optional:
                return None  # type: ignore[return-value]
            raise PreprocessingError(f"stored correlations lack {name!r}")
        a = np.asarray(arrays[name])
        if a.dtype != dtype or (shape is not None and a.shape != tuple(shape)):
            raise PreprocessingError(f"stored {name!r} has shape {a.shape}, planned {shape}")
        used.add(name)
        return a

    nt = plan.triples
    triples = tuple(get(f"t{i}", (nt,)) for i in range(3))
    squares = tuple(get(f"q{i}", (plan.squares,)) for i in range(2))
    wraps = (
        (get("w0", (plan.wraps,), dtype=np.uint8), get("w1", (plan.wraps,))) if plan.wraps else None
    )
    matmuls = []
    for n, ((*batch, m, k, nn), _) in enumerate(plan.matmul_specs()):
        shapes = ((*batch, m, k), (*batch, k, nn), (*batch, m, nn))
        matmuls.append(tuple(get(f"m{n}.{i}", s) for i, s in enumerate(shapes)))
    linears = []
    for n, spec in enumerate(plan.linears):
        r = get(f"l{n}.r", (spec.rows, spec.k), optional=True)
        linears.append(LinearMask(spec, get(f"l{n}.s", (spec.rows, spec.n)), r))
    groups = []
    for n, spec in enumerate(plan.groups):
        masks = [get(f"g{n}.m{i}", s) for i, s in enumerate(spec.shapes)]
        prods = {p: get(f"g{n}.p{i}", spec.pair_shape(*p)) for i, p in enumerate(spec.pairs)}
        groups.append(MaskGroup(spec, masks, prods))
    extra = set(arrays) - used
    if extra:
        raise PreprocessingError(f"stored correlations hold unplanned arrays: {sorted(extra)[:3]}")
    return Pool(triples, squares, matmuls, linears, groups, wraps)  # type: ignore[arg-type]


def pool_nbytes(plan: Plan, party: int) -> int:
    """Bytes of the arrays `pool_arrays` gives for `plan` on `party` (before it exists:
    what a store must reserve). A wrap correlation: a 1-byte bit and an 8-byte share."""
    n = 3 * plan.triples + 2 * plan.squares + plan.wraps + -(-plan.wraps // 8)
    for (*batch, m, k, nn), _ in plan.matmul_specs():
        b = int(np.prod(batch)) if batch else 1
        n += b * (m * k + k * nn + m * nn)
    for spec in plan.linears:
        n += spec.rows * spec.n + (spec.rows * spec.k if party == CLIENT else 0)
    for g in plan.groups:
        masks, sq, cross = g.elements()
        n += masks + sq + cross
    return 8 * n
