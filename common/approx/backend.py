"""Arithmetic back-ends: one program, three ways to run it.

The non-linear functions (`common.approx.functions`) and the model program
(`common.protocol.program`) are written once against `Backend`. Three back-ends run
them:

- `SharedBackend` — the real thing: additive shares over Z_2^64 through `Mpc`.
- `PlainBackend(frac_bits=None)` — float64 torch: the same arithmetic (Newton steps,
  polynomials, public constants) with real numbers; predicts the approximation error.
- `PlainBackend(frac_bits=f)` — fixed-point emulation in int64 torch: every product is
  truncated by f bits exactly where the protocol truncates (floor; the protocol's
  truncation, exact or local, adds at most one more unit in the last place).

Values are opaque to the programs except for `+`, `-`, `.reshape`, `.shape` and basic
indexing, which numpy uint64 arrays and torch tensors both provide with the same
meaning (wrap-around for the integer kinds).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from common.mpc.correlations import WRAP_TRIPLE_FAILURE, Bind, GroupSpec
from common.mpc.engine import LOOKUP_BITS, Mpc, OpenedGroup
from common.mpc.ring import U64, public_const_extra_bits
from common.mpc.roles import CLIENT, SERVER

if TYPE_CHECKING:
    import torch

Value = Any  # numpy uint64 shares (SharedBackend) or a torch tensor (PlainBackend)


@dataclass(frozen=True)
class Raw:
    """A value before its truncation: `value` at scale 2^(f + bits); `trunc_many`
    divides by 2^bits. Several raw terms truncated together cost one round, and a raw
    product scaled by a public constant (`scaled`) is truncated once, not twice."""

    value: Any
    bits: int


def _writable(x: object) -> NDArray[np.float64]:
    """float64 array torch can wrap without a warning: read-only inputs (broadcast
    views, shared tables) are copied, writable ones are not."""
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).numpy()
    return np.require(np.asarray(x, dtype=np.float64), requirements="W")


class Backend(Protocol):
    """The operations a program may use. Costs are those of `SharedBackend`."""

    frac_bits: int | None

    def input(self, owner: int, x: NDArray | None, shape: tuple[int, ...]) -> Value: ...
    def output(self, x: Value, to: int | None = CLIENT) -> NDArray[np.float64] | None: ...
    def add_public(self, x: Value, c: NDArray | float) -> Value: ...
    def mul_public(self, x: Value, c: NDArray | float) -> Value: ...
    def scaled(self, x: Value | Raw, c: float) -> Raw: ...
    def trunc_many(self, items: list[Raw]) -> list[Value]: ...
    def raw_sum(self, terms: list[tuple[Raw, int]]) -> Raw: ...
    def mul_raw(self, x: Value, y: Value) -> Raw: ...
    def mul(self, x: Value, y: Value) -> Value: ...
    def mul_many(self, pairs: list[tuple[Value, Value]]) -> list[Value]: ...
    def square(self, x: Value) -> Value: ...
    def sum(self, x: Value, axis: int, keepdims: bool = False) -> Value: ...
    def mean(self, x: Value, axis: int, keepdims: bool = False) -> Value: ...
    def matmul(self, x: Value, y: Value, binds: tuple[Bind | None, Bind | None] = ...) -> Value: ...
    def swap(self, x: Value, a: int, b: int) -> Value: ...
    def broadcast(self, x: Value, shape: tuple[int, ...]) -> Value: ...
    def concat(self, xs: list[Value], axis: int) -> Value: ...
    def linear(
        self, x: Value, key: str, out: int, weight: NDArray | None, bias: NDArray | None
    ) -> Value: ...
    def lookup(
        self, onehot: NDArray | None, shape: tuple[int, ...], key: str, out: int,
        table: NDArray | None,
    ) -> Value: ...  # fmt: skip
    def server_constant(self, c: NDArray | None, shape: tuple[int, ...]) -> Value: ...
    def client_value(self, c: NDArray | None, shape: tuple[int, ...]) -> Value: ...
    def group(
        self,
        shapes: list[tuple[int, ...]],
        pairs: list[tuple[int, int]],
        binds: list[Bind | None] | None = None,
    ) -> Group: ...


class Group(Protocol):
    """Values opened once and multiplied many times (`common.mpc.engine.OpenedGroup`):
    `open({i: x_i, …})` costs one round and 8 bytes per element; `mul(i, j)` is the
    truncated product x_i·x_j of two open values (planned in `pairs`): local, plus the
    truncation's round when exact; `mul_many` truncates several in that one round."""

    def open(self, values: dict[int, Value]) -> None: ...
    def mul(self, i: int, j: int) -> Value: ...
    def mul_many(self, pairs: list[tuple[int, int]]) -> list[Value]: ...
    def mul_raw(self, i: int, j: int) -> Raw: ...


# ----------------------------------------------------------------------------------------
class SharedBackend:
    """`Backend` over `Mpc` shares. Per-op costs are those documented on `Mpc`."""

    def __init__(self, mpc: Mpc) -> None:
        self.mpc = mpc
        self.frac_bits: int | None = mpc.f

    @property
    def party(self) -> int:
        return self.mpc.party

    def input(self, owner: int, x: NDArray | None, shape: tuple[int, ...]) -> Value:
        """Secret-share a real-valued input held by `owner` (owner sends 8n bytes)."""
        return self.mpc.share(owner, x if self.party == owner else None, shape)

    def output(self, x: Value, to: int | None = CLIENT) -> NDArray[np.float64] | None:
        """Open `x` to `to` only (None: both). The other party gets None."""
        return self.mpc.reveal(x, to)

    def add_public(self, x: Value, c: NDArray | float) -> Value:
        return self.mpc.add_public(x, c)

    def mul_public(self, x: Value, c: NDArray | float) -> Value:
        return self.mpc.mul_public(*self._public_operands(x, c))

    def scaled(self, x: Value | Raw, c: float) -> Raw:
        """x·c before truncation (a scalar c, encoded as `Mpc.mul_public` does). Local.

        Under local truncation a raw x is truncated first (free there, and the larger
        fused value would fail |v|/2^64 more often)."""
        raw = x if isinstance(x, Raw) else Raw(x, 0)
        if raw.bits and not self.mpc.exact:
            raw = Raw(self.mpc.trunc(raw.value, raw.bits), 0)
        v, bits = self.mpc.scale_public(raw.value, c)
        return Raw(v, raw.bits + bits)

    def raw_sum(self, terms: list[tuple[Raw, int]]) -> Raw:
        """Σ ±raw (sign ±1), aligned to the largest scale by exact shifts: one
        truncation for the sum instead of one per term. Local. Under local truncation
        each term is truncated first (free there; the aligned sum would be larger)."""
        if not self.mpc.exact:
            vals = self.trunc_many([r for r, _ in terms])
            return Raw(_signed_sum([(v, sg) for v, (_, sg) in zip(vals, terms, strict=True)]), 0)
        top = max(r.bits for r, _ in terms)
        aligned = [
            (r.value << U64(top - r.bits) if top > r.bits else r.value, sg) for r, sg in terms
        ]
        return Raw(_signed_sum(aligned), top)

    def trunc_many(self, items: list[Raw]) -> list[Value]:
        """Every raw term truncated, in one round (`Mpc.trunc_many`); terms with no bits
        to drop pass through."""
        cut = [(r.value, r.bits) for r in items if r.bits]
        done = iter(self.mpc.trunc_many(cut) if cut else [])
        return [next(done) if r.bits else r.value for r in items]

    @staticmethod
    def _public_operands(x: Value, c: NDArray | float) -> tuple[Value, NDArray]:
        c = np.asarray(c, dtype=np.float64)
        if c.shape and c.shape != x.shape:
            c = np.broadcast_to(c, np.broadcast_shapes(c.shape, x.shape))
            x = np.broadcast_to(x, c.shape)
        return x, c

    def _same(self, x: Value, y: Value) -> tuple[Value, Value]:
        if x.shape == y.shape:
            return x, y
        shape = np.broadcast_shapes(x.shape, y.shape)
        return np.broadcast_to(x, shape).copy(), np.broadcast_to(y, shape).copy()

    def mul(self, x: Value, y: Value) -> Value:
        x, y = self._same(x, y)
        return self.mpc.mul(x, y)

    def mul_raw(self, x: Value, y: Value) -> Raw:
        """x·y before truncation (Beaver triple, 1 round)."""
        x, y = self._same(x, y)
        return Raw(self.mpc.mul_ring(x, y), self.mpc.f)

    def mul_many(self, pairs: list[tuple[Value, Value]]) -> list[Value]:
        fixed = []
        for x, y in pairs:
            fixed.append((x, x) if x is y else self._same(x, y))
        return self.mpc.mul_many(fixed)

    def square(self, x: Value) -> Value:
        return self.mpc.square(x)

    def group(
        self,
        shapes: list[tuple[int, ...]],
        pairs: list[tuple[int, int]],
        binds: list[Bind | None] | None = None,
    ) -> Group:
        """See `Group`; shares are made contiguous on opening. A value whose mask has a
        `Bind` (a linear layer's output, laid out as the bind says) is sent by the
        server only."""
        spec = GroupSpec(tuple(map(tuple, shapes)), tuple(pairs), tuple(self._binds(binds or ())))
        return _SharedGroup(self.mpc.group(spec))

    def sum(self, x: Value, axis: int, keepdims: bool = False) -> Value:
        return self.mpc.sum(x, axis, keepdims)

    def mean(self, x: Value, axis: int, keepdims: bool = False) -> Value:
        return self.mpc.mean(x, axis, keepdims)

    def matmul(
        self, x: Value, y: Value, binds: tuple[Bind | None, Bind | None] = (None, None)
    ) -> Value:
        b0, b1 = self._binds(binds)
        return self.mpc.matmul(np.ascontiguousarray(x), np.ascontiguousarray(y), (b0, b1))

    def _binds(self, binds: Iterable[Bind | None]) -> list[Bind | None]:
        """`Bind`s hold only under local truncation: a bound mask's client share is the
        client's share of a linear output, fixed offline when truncated locally, but
        data-dependent after an exact truncation (its wrap bit). So exact runs drop them
        (the client then sends its part of those openings too)."""
        return [None if self.mpc.exact else b for b in binds]

    def swap(self, x: Value, a: int, b: int) -> Value:
        return np.ascontiguousarray(np.swapaxes(x, a, b))

    def broadcast(self, x: Value, shape: tuple[int, ...]) -> Value:
        return np.broadcast_to(x, shape).copy()

    def concat(self, xs: list[Value], axis: int) -> Value:
        """Shares joined along `axis` (local: each party joins its own shares)."""
        return np.concatenate(xs, axis=axis)

    def linear(
        self, x: Value, key: str, out: int, weight: NDArray | None, bias: NDArray | None
    ) -> Value:
        return self.mpc.linear(x, key, out, weight, bias)

    def lookup(
        self,
        onehot: NDArray | None,
        shape: tuple[int, ...],
        key: str,
        out: int,
        table: NDArray | None,
    ) -> Value:
        """Client one-hot rows × server table (`Mpc.lookup`: 6 bytes per entry)."""
        return self.mpc.lookup(onehot if self.party == CLIENT else None, shape, key, out, table)

    def server_constant(self, c: NDArray | None, shape: tuple[int, ...]) -> Value:
        """A share of a value the server knows (server: its encoding, client: 0). Free."""
        if self.party == SERVER:
            if c is None or np.shape(c) != tuple(shape):
                raise ValueError(f"server must supply a constant of shape {shape}")
            return self.mpc.fxp.encode(c)
        return np.zeros(shape, dtype=U64)

    def client_value(self, c: NDArray | None, shape: tuple[int, ...]) -> Value:
        """A share of a value only the client knows (client: its encoding, server: 0).

        Free, and unlike `input` it sends nothing: the value must only ever enter a
        masked protocol (e.g. `linear`), never be opened."""
        if self.party == CLIENT:
            if c is None or np.shape(c) != tuple(shape):
                raise ValueError(f"client must supply a value of shape {shape}")
            return self.mpc.fxp.encode(c)
        return np.zeros(shape, dtype=U64)


# ----------------------------------------------------------------------------------------
class PlainBackend:
    """`Backend` on plaintext torch tensors: float64, or int64 fixed point with f bits.

    Sees both parties' data (it is an emulation); `input` and `server_constant` take
    the value directly.
    """

    def __init__(
        self, frac_bits: int | None = None, track_risk: bool = False, exact: bool = True
    ) -> None:
        if frac_bits is not None and not 8 <= frac_bits <= 30:
            raise ValueError("frac_bits must be in 8..30")
        self.frac_bits = frac_bits
        # With `track_risk`: the expected number of failed truncations the shared run of
        # the same program would suffer (off by default: it costs a pass over every
        # truncated tensor). `exact` says which truncation that run uses (`Mpc.exact`):
        # local truncation fails with probability |v|/2^64 per truncated value v (and
        # the lookup's local Z_2^48 → Z_2^64 lift with |v|/2^48); the exact one only for
        # |v| ≥ 2^62 (2^46 for the lift), outside its range, counted as a certain failure,
        # and with 2^-57 per value for its HE-made bit triple (`WRAP_TRIPLE_FAILURE`).
        self.track_risk = track_risk
        self.exact = exact
        self.truncation_risk = 0.0
        self.truncations = 0
        self.max_truncated = 0.0  # the largest |v| truncated (exact: must stay < 2^62)
        # The same sum per site ("layer0.gelu", …: the labels of `scope`).
        self.risk_by_site: dict[str, float] = {}
        self.other_risk_by_site: dict[str, float] = {}
        self._labels: dict[str, str] = {}

    def _count_risk(self, x: torch.Tensor, ring_bits: int = 64) -> None:
        import torch  # lazily: the client never loads it

        a = x.abs()
        local = float(a.sum(dtype=torch.float64)) * 2.0**-ring_bits
        # exact truncation: certain failure outside its range, and its bit triple's
        # own failure probability (`WRAP_TRIPLE_FAILURE`) for every value
        exact = float((a >= 2 ** (ring_bits - 2)).sum()) + x.numel() * WRAP_TRIPLE_FAILURE
        risk = exact if self.exact else local
        if x.numel():
            self.max_truncated = max(self.max_truncated, float(a.max()))
        self.truncation_risk += risk
        self.truncations += x.numel()
        key = self.site()
        self.risk_by_site[key] = self.risk_by_site.get(key, 0.0) + risk
        # the other policy's risk on the same values, for comparison (`comet-bench risk`)
        other = local if self.exact else exact
        self.other_risk_by_site[key] = self.other_risk_by_site.get(key, 0.0) + other

    @contextmanager
    def scope(self, **labels: str) -> Iterator[None]:
        """Label the truncations inside with `layer=…` / `op=…` (as `Channel.scope`
        labels traffic): `risk_by_site` keys are "layer.op"."""
        saved = dict(self._labels)
        self._labels.update(labels)
        try:
            yield
        finally:
            self._labels = saved

    def site(self) -> str:
        """The current label ("layer.op"; "-" where unset)."""
        return f"{self._labels.get('layer', '-')}.{self._labels.get('op', '-')}"

    @property
    def fixed(self) -> bool:
        return self.frac_bits is not None

    def encode(self, x: NDArray | float | torch.Tensor, bits: int | None = None) -> torch.Tensor:
        import torch  # lazily: the client never loads it

        t = torch.as_tensor(_writable(x))
        if not self.fixed:
            return t
        b = self.frac_bits if bits is None else bits
        return torch.round(t * 2.0**b).to(torch.int64)

    def decode(self, x: torch.Tensor) -> NDArray[np.float64]:
        if not self.fixed:
            return x.double().numpy()
        return (x.double() / 2.0**self.frac_bits).numpy()

    def _trunc(self, x: torch.Tensor, bits: int | None = None) -> torch.Tensor:
        if self.track_risk:
            self._count_risk(x)
        return x >> (self.frac_bits if bits is None else bits)

    def input(self, owner: int, x: NDArray | None, shape: tuple[int, ...]) -> Value:
        if x is None or tuple(np.shape(x)) != tuple(shape):
            raise ValueError(f"input must have shape {shape}")
        return self.encode(x)

    def output(self, x: Value, to: int | None = CLIENT) -> NDArray[np.float64] | None:
        return self.decode(x)

    def add_public(self, x: Value, c: NDArray | float) -> Value:
        return x + self.encode(c)

    def mul_public(self, x: Value, c: NDArray | float) -> Value:
        import torch  # lazily: the client never loads it

        if not self.fixed:
            return x * torch.as_tensor(_writable(c))
        # Same encoding rule as Mpc.mul_public: small constants get extra bits.
        raw = self.scaled(x, c)
        return self._trunc(raw.value, raw.bits)

    def scaled(self, x: Value | Raw, c: NDArray | float) -> Raw:
        raw = x if isinstance(x, Raw) else Raw(x, 0)
        if not self.fixed:
            return Raw(raw.value * c, 0)
        if raw.bits and not self.exact:  # as `SharedBackend.scaled`
            raw = Raw(self._trunc(raw.value, raw.bits), 0)
        f = self.frac_bits
        assert f is not None
        bits = f + public_const_extra_bits(c, f)
        return Raw(raw.value * self.encode(c, bits), raw.bits + bits)

    def raw_sum(self, terms: list[tuple[Raw, int]]) -> Raw:
        if not self.fixed:
            return Raw(_signed_sum([(r.value, sg) for r, sg in terms]), 0)
        if not self.exact:  # as `SharedBackend.raw_sum`
            vals = self.trunc_many([r for r, _ in terms])
            return Raw(_signed_sum([(v, sg) for v, (_, sg) in zip(vals, terms, strict=True)]), 0)
        top = max(r.bits for r, _ in terms)
        return Raw(_signed_sum([(r.value << (top - r.bits), sg) for r, sg in terms]), top)

    def trunc_many(self, items: list[Raw]) -> list[Value]:
        if not self.fixed:
            return [r.value for r in items]
        return [self._trunc(r.value, r.bits) if r.bits else r.value for r in items]

    def mul(self, x: Value, y: Value) -> Value:
        return self._trunc(x * y) if self.fixed else x * y

    def mul_raw(self, x: Value, y: Value) -> Raw:
        return Raw(x * y, self.frac_bits or 0)

    def mul_many(self, pairs: list[tuple[Value, Value]]) -> list[Value]:
        return [self.mul(x, y) for x, y in pairs]

    def square(self, x: Value) -> Value:
        return self.mul(x, x)

    def group(
        self,
        shapes: list[tuple[int, ...]],
        pairs: list[tuple[int, int]],
        binds: list[Bind | None] | None = None,
    ) -> Group:
        # Binds only change who sends; the values are the same.
        return _PlainGroup(self, GroupSpec(tuple(map(tuple, shapes)), tuple(pairs)))

    def sum(self, x: Value, axis: int, keepdims: bool = False) -> Value:
        return x.sum(dim=axis, keepdim=keepdims)

    def mean(self, x: Value, axis: int, keepdims: bool = False) -> Value:
        return self.mul_public(self.sum(x, axis, keepdims), 1.0 / x.shape[axis])

    def matmul(
        self, x: Value, y: Value, binds: tuple[Bind | None, Bind | None] = (None, None)
    ) -> Value:
        return self._trunc(x @ y) if self.fixed else x @ y

    def swap(self, x: Value, a: int, b: int) -> Value:
        return x.transpose(a, b).contiguous()

    def broadcast(self, x: Value, shape: tuple[int, ...]) -> Value:
        return x.expand(*shape).contiguous()

    def concat(self, xs: list[Value], axis: int) -> Value:
        import torch  # lazily: the client never loads it

        return torch.cat(xs, dim=axis)

    def linear(
        self, x: Value, key: str, out: int, weight: NDArray | None, bias: NDArray | None
    ) -> Value:
        if weight is None:
            raise ValueError(f"plain back-end needs the weight {key!r}")
        w = self.encode(weight)
        y = x @ w
        if bias is not None:
            f = self.frac_bits
            y = y + (self.encode(bias, 2 * f) if self.fixed else self.encode(bias))  # type: ignore[operator]
        return self._trunc(y) if self.fixed else y

    def lookup(
        self,
        onehot: NDArray | None,
        shape: tuple[int, ...],
        key: str,
        out: int,
        table: NDArray | None,
    ) -> Value:
        import torch  # lazily: the client never loads it

        if onehot is None or table is None:
            raise ValueError(f"plain back-end needs the one-hot rows and the table {key!r}")
        # The one-hot is an integer: the product is the table at its own scale.
        oh = torch.as_tensor(_writable(onehot))
        if self.fixed:
            oh = oh.to(torch.int64)
        y = oh @ self.encode(table)
        if self.fixed and self.track_risk:  # the lift out of Z_2^48 (`Mpc.lookup`)
            self._count_risk(y, LOOKUP_BITS)
        return y

    def server_constant(self, c: NDArray | None, shape: tuple[int, ...]) -> Value:
        if c is None:
            raise ValueError("plain back-end needs the constant")
        return self.encode(np.broadcast_to(c, shape))

    def client_value(self, c: NDArray | None, shape: tuple[int, ...]) -> Value:
        return self.server_constant(c, shape)


def _signed_sum(terms: list[tuple[Value, int]]) -> Value:
    """Σ sign·value (sign ±1) of shares or tensors, broadcasting."""
    (v0, s0), rest = terms[0], terms[1:]
    acc = v0 if s0 > 0 else -v0
    for v, sg in rest:
        acc = acc + v if sg > 0 else acc - v
    return acc


def public_mask_like(x: Value, mask: NDArray) -> NDArray:
    """Broadcast a public 0/1 mask to x's shape (helper for programs)."""
    return np.broadcast_to(np.asarray(mask, dtype=np.float64), tuple(x.shape))


class _SharedGroup:
    def __init__(self, g: OpenedGroup) -> None:
        self.g = g

    def open(self, values: dict[int, Value]) -> None:
        self.g.open({i: np.ascontiguousarray(v) for i, v in values.items()})

    def mul(self, i: int, j: int) -> Value:
        return self.g.product(i, j)

    def mul_many(self, pairs: list[tuple[int, int]]) -> list[Value]:
        return self.g.products(pairs)

    def mul_raw(self, i: int, j: int) -> Raw:
        return Raw(self.g.product_ring(i, j), self.g.mpc.f)


class _PlainGroup:
    """Plain counterpart of `OpenedGroup`: the same truncated products, with the same
    checks (planned shapes and pairs, values open)."""

    def __init__(self, ops: PlainBackend, spec: GroupSpec) -> None:
        self.ops, self.spec = ops, spec
        self.values: dict[int, Value] = {}

    def open(self, values: dict[int, Value]) -> None:
        for i, v in values.items():
            if i in self.values:
                raise ValueError(f"value {i} of this group is already open")
            if tuple(v.shape) != self.spec.shapes[i]:
                want = self.spec.shapes[i]
                raise ValueError(f"value {i}: shape {tuple(v.shape)}, planned {want}")
            self.values[i] = v

    def mul(self, i: int, j: int) -> Value:
        i, j = min(i, j), max(i, j)
        if (i, j) not in self.spec.pairs:
            raise ValueError(f"product {(i, j)} was not planned")
        return self.ops.mul(self.values[i], self.values[j])

    def mul_many(self, pairs: list[tuple[int, int]]) -> list[Value]:
        return [self.mul(i, j) for i, j in pairs]

    def mul_raw(self, i: int, j: int) -> Raw:
        i, j = min(i, j), max(i, j)
        if (i, j) not in self.spec.pairs:
            raise ValueError(f"product {(i, j)} was not planned")
        x, y = self.values[i], self.values[j]
        return Raw(x * y, self.ops.frac_bits or 0)
