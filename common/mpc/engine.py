"""`Mpc`: one party's runtime for additive 2-out-of-2 sharing over Z_{2^64}.

Both parties construct an `Mpc` with their own channel end and correlation source and
run the *same* program; the party index only decides who adds public constants and
where inputs enter or outputs leave. Shares are plain numpy uint64 arrays.

Costs below are per party, online, for n elements; "round" as defined in
`common.transport.channel`. f = fixed-point fractional bits.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from common.mpc.correlations import (
    Bind,
    GroupSpec,
    LinearMask,
    LinearSpec,
    MaskGroup,
    PreprocessingError,
)
from common.mpc.ring import (
    U64,
    FixedPoint,
    PublicMatrices,
    PublicMatrix,
    Ring,
    from_signed,
    new_rng,
    public_const_extra_bits,
    random_ring,
    ring_matmul,
    ring_matmul_public,
    trunc_share,
    wrap_finish,
    wrap_local,
)
from common.mpc.roles import CLIENT, SERVER
from common.prg import SecureRng, require_secure
from common.transport import Channel


class CorrelationSource(Protocol):
    def triples(self, n: int) -> tuple[Ring, Ring, Ring]: ...
    def squares(self, n: int) -> tuple[Ring, Ring]: ...
    def wraps(self, n: int) -> tuple[NDArray[np.uint8], Ring]: ...
    def matmul_triple(
        self, shape: tuple[int, ...], binds: tuple[Bind | None, Bind | None] = ...
    ) -> tuple[Ring, Ring, Ring]: ...
    def linear_mask(
        self, spec: LinearSpec, weight: NDArray[np.int64] | PublicMatrix | None = None
    ) -> LinearMask: ...
    def group(self, spec: GroupSpec) -> MaskGroup: ...


class OpenedGroup:
    """Values opened once, multiplied many times ("open once, multiply many").

    Each value x_i is opened as d_i = x_i − A_i with its own preprocessed mask A_i;
    every planned product then follows locally from the public d's, the mask shares and
    the preprocessed mask products: x_i·x_j = d_i·d_j + d_i·A_j + d_j·A_i + A_i·A_j.
    A value that takes part in k products is sent once instead of k times (a Beaver
    triple sends both factors for every product).

    Cost: `open` sends 8 bytes per opened element (both parties), 1 round per call;
    `product` is local.
    """

    def __init__(self, mpc: Mpc, masks: MaskGroup) -> None:
        self.mpc, self.m = mpc, masks
        self.opened: dict[int, Ring] = {}

    def open(self, values: dict[int, Ring], tag: str = "open") -> None:
        """Open several values (one message each way, 1 round). Each mask is used once;
        values with a bound mask (`Bind`) are sent by the server only."""
        items = []
        for i, x in values.items():
            if i in self.opened:
                raise ValueError(f"value {i} of this group is already open")
            shape = self.m.spec.shapes[i]
            if tuple(x.shape) != shape:
                raise ValueError(f"value {i}: shape {tuple(x.shape)}, planned {shape}")
            items.append((x - self.m.masks[i], self.m.spec.bind(i) is not None))
        for i, d in zip(values, self.mpc.open_masked(tag, items), strict=True):
            self.opened[i] = d

    def product_ring(self, i: int, j: int) -> Ring:
        """Share of x_i·x_j (broadcast shape), not truncated. Local."""
        i, j = min(i, j), max(i, j)
        if (i, j) not in self.m.products:
            raise ValueError(f"product {(i, j)} was not planned")
        if i not in self.opened or j not in self.opened:
            raise ValueError(f"product {(i, j)} needs both values open")
        di, dj = self.opened[i], self.opened[j]
        ai, aj = self.m.masks[i], self.m.masks[j]
        # c + d_i·a_j + d_j·a_i (+ d_i·d_j on the server, folded as d_i·(a_j + d_j)),
        # accumulated in place: these are the online phase's largest temporaries
        z = di * (aj + dj if self.mpc.party == SERVER else aj)
        z += dj * ai
        z += self.m.products[(i, j)]
        return z

    def product(self, i: int, j: int) -> Ring:
        """`product_ring` truncated by f (`Mpc.trunc`: 1 round when exact)."""
        return self.mpc.trunc(self.product_ring(i, j))

    def products(self, pairs: list[tuple[int, int]]) -> list[Ring]:
        """Several `product`s truncated together (`Mpc.trunc_many`: 1 round)."""
        return self.mpc.trunc_many([(self.product_ring(i, j), self.mpc.f) for i, j in pairs])


LOOKUP_BITS = 48  # the ring of `Mpc.lookup` (one-hot rows times a server table)


def _pack48(z: Ring) -> NDArray[np.uint8]:
    """Values below 2^48 as 6 little-endian bytes each: (n, 6) uint8."""
    return np.ascontiguousarray(z.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :6])


def _unpack48(b: NDArray[np.uint8], shape: tuple[int, ...]) -> Ring:
    full = np.zeros((b.shape[0], 8), np.uint8)
    full[:, :6] = b
    return full.view("<u8").reshape(shape).astype(U64)


class Mpc:
    """Secret-shared arithmetic for one party. Not thread-safe."""

    def __init__(
        self,
        channel: Channel,
        source: CorrelationSource,
        fxp: FixedPoint | None = None,
        rng: SecureRng | None = None,
        exact: bool | None = None,
        matrices: PublicMatrices | None = None,
    ) -> None:
        self.ch = channel
        self.source = source
        self.fxp = fxp or FixedPoint()
        self.rng = new_rng() if rng is None else require_secure(rng, "Mpc")
        # Exact truncation (a wrap bit from the shares, `trunc_many`) or SecureML local
        # truncation (no round, fails with probability |v|/2^64); by default the fixed-
        # point policy's. Part of the plan: the exact one consumes wrap correlations, so
        # the parties' plan digests differ if they disagree.
        self.exact = self.fxp.exact_trunc if exact is None else exact
        # The server's encoded weights, memoised by site key across the planning run,
        # the online phase and (when the caller keeps it) sessions.
        self.matrices = PublicMatrices() if matrices is None else matrices

    @property
    def party(self) -> int:
        return self.ch.party

    @property
    def f(self) -> int:
        return self.fxp.frac_bits

    # -- input and output ----------------------------------------------------------
    def share_ring(self, owner: int, x: Ring | None, shape: tuple[int, ...]) -> Ring:
        """Share ring elements held by `owner`. Cost: owner sends 8n bytes; 1 round."""
        if self.party == owner:
            if x is None or tuple(np.shape(x)) != tuple(shape):
                raise ValueError(f"owner must provide an input of shape {shape}")
            other = random_ring(self.rng, shape)
            self.ch.send_array("share", other)
            return np.asarray(x, dtype=U64) - other
        return self.ch.recv_array("share", tuple(shape), U64).copy()

    def share(self, owner: int, x: NDArray | None, shape: tuple[int, ...]) -> Ring:
        """Share real values (fixed-point encoded by the owner). Cost as `share_ring`."""
        enc = self.fxp.encode(x) if self.party == owner and x is not None else None
        return self.share_ring(owner, enc, shape)

    def reveal_ring(self, x: Ring, to: int | None = None) -> Ring | None:
        """Open a shared value to one party (`to`) or both (None).

        Cost: to one party, the other sends 8n bytes (1 round); to both, each sends 8n.
        """
        if to is None:
            return x + self.ch.exchange_array("reveal", x)
        if self.party == to:
            return x + self.ch.recv_array("reveal", x.shape, U64)
        self.ch.send_array("reveal", x)
        return None

    def reveal(self, x: Ring, to: int | None = None) -> NDArray[np.float64] | None:
        r = self.reveal_ring(x, to)
        return None if r is None else self.fxp.decode(r)

    # -- local operations (no communication) ------------------------------------------
    def add_public(self, x: Ring, c: NDArray | float) -> Ring:
        """x + c for a public real c (party 0 adds the encoding)."""
        if self.party == SERVER:
            return x + self.fxp.encode(c)
        return x.copy()

    def add_public_ring(self, x: Ring, c: Ring) -> Ring:
        return x + c if self.party == SERVER else x.copy()

    def mul_public_int(self, x: Ring, c: NDArray | int) -> Ring:
        """x · c for a public integer c (exact, no truncation)."""
        return x * from_signed(np.asarray(c, dtype=np.int64))

    def mul_public(self, x: Ring, c: NDArray | float) -> Ring:
        """x · c for a public real c: encode c, multiply, truncate.

        The constant is encoded with ~f significant bits (`public_const_extra_bits`):
        small ones get extra fractional bits, large scalars fewer; the truncation by the
        same number of bits removes them again.
        """
        return self.trunc(*self.scale_public(x, c))

    def scale_public(self, x: Ring, c: NDArray | float) -> tuple[Ring, int]:
        """x·c_int before truncation and the bits to truncate by (`mul_public`'s
        encoding, `public_const_extra_bits`). Local."""
        bits = self.f + public_const_extra_bits(c, self.f)
        ci = np.rint(np.asarray(c, dtype=np.float64) * 2.0**bits).astype(np.int64)
        return x * from_signed(ci), bits

    def trunc(self, x: Ring, bits: int | None = None) -> Ring:
        """Divide by 2^bits (default f): exact (`trunc_many`, 1 round) or, with
        `exact=False`, local (`trunc_share`: no round, fails with probability |v|/2^64)."""
        b = self.f if bits is None else bits
        if not self.exact:
            return trunc_share(x, b, self.party)
        return self.trunc_many([(x, b)])[0]

    def trunc_many(self, items: list[tuple[Ring, int]]) -> list[Ring]:
        """Exact division of several shared values, each by its own 2^bits, in one round.

        For |v| < 2^62 the result is ⌊v/2^bits⌋ + {0, 1}, always (`wrap_local`): each
        party shifts its offset share and the shared wrap bit w = a ∨ b of the two
        shares' top bits is removed (`wrap_bits`). Nothing is revealed: each party sees
        only the other's top bits one-time-padded by a preprocessed random bit.
        Cost: n/8 bytes sent by each party (n = total elements), 1 round, n wrap
        correlations. With `exact=False`: local truncation, no round.
        """
        if not self.exact:
            return [trunc_share(x, b, self.party) for x, b in items]
        if not items:
            return []  # no round for nothing to truncate
        halves = [wrap_local(x, b, self.party) for x, b in items]
        msb = np.concatenate([m.ravel() for _, m in halves]) if halves else np.zeros(0, np.uint8)
        w = self.wrap_bits(msb)
        out, pos = [], 0
        for (x, b), (local, _) in zip(items, halves, strict=True):
            n = x.size
            out.append(wrap_finish(local, w[pos : pos + n].reshape(x.shape), b, self.party))
            pos += n
        return out

    def wrap_bits(self, mine: NDArray[np.uint8]) -> Ring:
        """Shares in Z_2^64 of a ∨ b for bits a (party 0's) and b (party 1's), elementwise.

        a ∨ b = a + b − ab, and ab by a preprocessed bit triple (u, v, uv): party 0 holds
        u and a share z_0 of uv, party 1 holds v and z_1. Each sends its bit ⊕ its
        random bit (d = a ⊕ u, e = b ⊕ v; a one-time pad); with a = d + (1−2d)u and
        b = e + (1−2e)v, ab = de + e(1−2d)u + d(1−2e)v + (1−2d)(1−2e)uv splits into a
        part each party computes. Cost: ⌈n/8⌉ bytes each way, 1 round, n wrap
        correlations.
        """
        shape, n = mine.shape, mine.size
        r, z = self.source.wraps(n)
        bit = mine.reshape(-1).view(np.int8)  # 0/1
        padded = bit ^ r.view(np.int8)
        theirs = np.unpackbits(self.ch.exchange_array("wrap", np.packbits(padded)))[:n]
        d, e = (padded, theirs.view(np.int8))
        if self.party != SERVER:
            d, e = e, d
        # (1−2d)(1−2e)·z = ±z, negative where d ⊕ e: with M = 0 or all ones there,
        # (z ⊕ M) − M is z or −z (a masked `np.negative(where=)` is ≈ 2× slower)
        flip = (d ^ e).astype(np.int64)
        np.negative(flip, out=flip)
        zpart = z ^ flip.view(U64)
        zpart -= flip.view(U64)
        # this party's bit minus the small terms of its share of ab, in {−2, …, 2}:
        # party 0 de + e(1−2d)u, party 1 d(1−2e)v
        r8 = r.view(np.int8)
        if self.party == SERVER:
            t8 = bit - (d & e) - (e & r8) * (1 - 2 * d)
        else:
            t8 = bit - (d & r8) * (1 - 2 * e)
        w = t8.astype(np.int64).view(U64)
        w -= zpart
        return w.reshape(shape)

    def sum(
        self, x: Ring, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> Ring:
        return np.sum(x, axis=axis, keepdims=keepdims, dtype=U64)

    def mean(self, x: Ring, axis: int, keepdims: bool = False) -> Ring:
        """Mean along `axis`: local sum, then multiply by the public 1/size and truncate."""
        return self.mul_public(self.sum(x, axis, keepdims), 1.0 / x.shape[axis])

    # -- interactive operations -------------------------------------------------------
    def mul_ring(self, x: Ring, y: Ring) -> Ring:
        """Element-wise product without truncation (Beaver triple).

        Cost: 16n bytes sent, 1 round, n triples.
        """
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
        n = x.size
        a, b, c = self.source.triples(n)
        a, b, c = (v.reshape(x.shape) for v in (a, b, c))
        mine = np.concatenate([(x - a).ravel(), (y - b).ravel()])
        opened = mine + self.ch.exchange_array("beaver", mine)
        d = opened[:n].reshape(x.shape)
        e = opened[n:].reshape(x.shape)
        z = c + d * b + e * a
        if self.party == SERVER:
            z += d * e
        return z

    def mul(self, x: Ring, y: Ring) -> Ring:
        """Fixed-point element-wise product: `mul_ring` then truncation by f."""
        return self.trunc(self.mul_ring(x, y))

    def mul_many_ring(self, pairs: list[tuple[Ring, Ring]]) -> list[Ring]:
        """Several independent products in one round, without truncation.

        A pair whose two members are the same object is a square and uses a square
        pair; the others use Beaver triples. Cost: one message of 8 bytes per square
        element plus 16 per product element; 1 round for the whole batch.
        """
        masked: list[Ring] = []
        plan: list[tuple[str, tuple[Ring, ...]]] = []
        for x, y in pairs:
            if x.shape != y.shape:
                raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
            if x is y:
                a, a2 = self.source.squares(x.size)
                a, a2 = a.reshape(x.shape), a2.reshape(x.shape)
                masked.append((x - a).ravel())
                plan.append(("sq", (a, a2)))
            else:
                a, b, c = (v.reshape(x.shape) for v in self.source.triples(x.size))
                masked.append((x - a).ravel())
                masked.append((y - b).ravel())
                plan.append(("mul", (a, b, c)))
        mine = np.concatenate(masked) if masked else np.zeros(0, dtype=U64)
        opened = mine + self.ch.exchange_array("mul_many", mine)
        out: list[Ring] = []
        pos = 0
        for (x, _), (kind, corr) in zip(pairs, plan, strict=True):
            n = x.size
            if kind == "sq":
                a, a2 = corr
                d = opened[pos : pos + n].reshape(x.shape)
                pos += n
                z = a2 + U64(2) * d * a
                if self.party == SERVER:
                    z += d * d
            else:
                a, b, c = corr
                d = opened[pos : pos + n].reshape(x.shape)
                e = opened[pos + n : pos + 2 * n].reshape(x.shape)
                pos += 2 * n
                z = c + d * b + e * a
                if self.party == SERVER:
                    z += d * e
            out.append(z)
        return out

    def group(self, spec: GroupSpec) -> OpenedGroup:
        """A fresh group of masks for `OpenedGroup` (planned: shapes and products)."""
        self._check_binds(spec.binds)
        return OpenedGroup(self, self.source.group(spec))

    def _check_binds(self, binds: tuple[Bind | None, ...]) -> None:
        """A `Bind` takes the client's share of a linear output as fixed offline, which
        holds only when that output was truncated locally."""
        if self.exact and any(b is not None for b in binds):
            raise ValueError(
                "bound masks (Bind) need local truncation (FixedPoint(exact_trunc=False)): "
                "an exact truncation makes the client's share of a linear output online"
            )

    def mul_many(self, pairs: list[tuple[Ring, Ring]]) -> list[Ring]:
        """`mul_many_ring` followed by one `trunc_many` of every product (2 rounds)."""
        return self.trunc_many([(z, self.f) for z in self.mul_many_ring(pairs)])

    def square_ring(self, x: Ring) -> Ring:
        """x² without truncation (square pair). Cost: 8n bytes sent, 1 round."""
        a, a2 = self.source.squares(x.size)
        a, a2 = a.reshape(x.shape), a2.reshape(x.shape)
        mine = x - a
        d = mine + self.ch.exchange_array("square", mine)
        z = a2 + U64(2) * d * a
        if self.party == SERVER:
            z += d * d
        return z

    def square(self, x: Ring) -> Ring:
        return self.trunc(self.square_ring(x))

    def matmul_ring(
        self, x: Ring, y: Ring, binds: tuple[Bind | None, Bind | None] = (None, None)
    ) -> Ring:
        """Shared (…, m, k) @ shared (…, k, n), no truncation (matrix triple).

        An operand with a `Bind` (a linear layer's output, laid out as the bind says)
        is opened by the server alone.
        Cost: 8(mk + kn) bytes sent per batch entry (the client: only unbound
        operands), 1 round.
        """
        if x.shape[:-2] != y.shape[:-2] or x.shape[-1] != y.shape[-2]:
            raise ValueError(f"matmul shape mismatch {x.shape} @ {y.shape}")
        self._check_binds(binds)
        a, b, c = self.source.matmul_triple(x.shape + y.shape[-1:], binds)
        d, e = self.open_masked(
            "matmul", [(x - a, binds[0] is not None), (y - b, binds[1] is not None)]
        )
        z = c + ring_matmul(d, b) + ring_matmul(a, e)
        if self.party == SERVER:
            z += ring_matmul(d, e)
        return z

    def matmul(
        self, x: Ring, y: Ring, binds: tuple[Bind | None, Bind | None] = (None, None)
    ) -> Ring:
        return self.trunc(self.matmul_ring(x, y, binds))

    def open_masked(self, tag: str, items: list[tuple[Ring, bool]]) -> list[Ring]:
        """Open masked differences x − A (each party passes its share of each).

        Unbound items: both parties send their share (8 bytes per element each way).
        Bound items (the client's share is 0 by construction, see `Bind`): only the
        server sends. One message each way at most; 1 round.
        """
        client = self.party == CLIENT
        if client:
            for diff, bound in items:
                if bound and diff.any():
                    raise PreprocessingError(
                        "a bound mask does not match the client's share of the linear output"
                    )
        send = [diff.ravel() for diff, bound in items if not (bound and client)]
        expect = sum(diff.size for diff, bound in items if not (bound and not client))
        cat = np.concatenate(send) if send else np.zeros(0, U64)
        if cat.size:
            self.ch.send_array(tag, cat)
        theirs = self.ch.recv_array(tag, (expect,), U64) if expect else np.zeros(0, U64)
        out, pm, pt = [], 0, 0
        for diff, bound in items:
            n = diff.size
            if not bound:  # the common case: one addition, no temporary
                v = cat[pm : pm + n] + theirs[pt : pt + n]
                pm, pt = pm + n, pt + n
            elif client:  # the server's part alone (the client's is 0)
                v = theirs[pt : pt + n]
                pt += n
            else:
                v = cat[pm : pm + n]
                pm += n
            out.append(v.reshape(diff.shape))
        return out

    def lookup(
        self,
        onehot: NDArray | None,
        shape: tuple[int, ...],
        key: str,
        out: int,
        table: NDArray | None = None,
    ) -> Ring:
        """Rows of the server's table (V × out) picked by the client's one-hot vectors
        (`shape` = (…, V), integer 0/1, client only), as fixed-point shares (…, out).

        A linear layer in the ring Z_2^48 (`LOOKUP_BITS`): the client sends its one-hot
        minus the offline mask r, mod 2^48, packed in 6 bytes per entry (a quarter less
        than 8); the one-hot is an integer, so the product is already at scale 2^f and
        needs no truncation. The Z_2^48 shares are then lifted to Z_2^64: exactly with
        the wrap bit of the 48-bit shares (`wrap_bits`, one more round, rows·out/8
        bytes each way), or with `exact=False` locally (the server subtracts 2^48),
        which is wrong with probability |v|/2^48 per output v (docs/SECURITY.md).
        Cost: the client sends 6·rows·V bytes, 1 round (+1); the server one exact GEMM.
        """
        lead, k = tuple(shape[:-1]), shape[-1]
        rows = math.prod(lead)
        w_int = None
        if self.party == SERVER:
            if table is None or table.shape != (k, out):
                raise ValueError(f"server must supply table {key!r} of shape {(k, out)}")
            w_int = self.matrices.encode(key, table, self.fxp)
            if w_int.max_abs >= 1 << (LOOKUP_BITS - 8):
                raise ValueError(f"table {key!r} too large for the Z_2^{LOOKUP_BITS} lookup")
        mask = self.source.linear_mask(LinearSpec(key, rows, k, out), w_int)
        low = U64((1 << LOOKUP_BITS) - 1)
        if self.party == CLIENT:
            assert mask.r is not None
            if onehot is None or tuple(np.shape(onehot)) != tuple(shape):
                raise ValueError(f"client must supply one-hot rows of shape {shape}")
            z = (np.asarray(onehot, dtype=np.int64).reshape(rows, k).view(U64) - mask.r) & low
            self.ch.send_array("lookup", _pack48(z))
            y = mask.share & low
        else:
            z = _unpack48(self.ch.recv_array("lookup", (rows * k, 6), np.uint8), (rows, k))
            y = (ring_matmul_public(z, w_int) + mask.share) & low
        if self.exact:  # lift Z_2^48 → Z_2^64 exactly: the wrap bit of the 48-bit shares
            local, msb = wrap_local(y, 0, self.party, LOOKUP_BITS)
            y = wrap_finish(local, self.wrap_bits(msb), 0, self.party, LOOKUP_BITS)
        elif self.party == SERVER:
            y = y - U64(1 << LOOKUP_BITS)
        return y.reshape(*lead, out)

    def linear(
        self,
        x: Ring,
        key: str,
        out_features: int,
        weight: NDArray | None = None,
        bias: NDArray | None = None,
    ) -> Ring:
        """x @ W + b with W (k × out) and b known to the server only.

        The client sends x_c − r (r from the offline mask); the server multiplies
        (x_s + x_c − r) by W in the clear and adds its share of r·W. Then truncation.
        Cost: the client sends 8·rows·k bytes, 1 round; the server one exact GEMM.
        """
        lead, k = x.shape[:-1], x.shape[-1]
        rows = math.prod(lead)
        spec = LinearSpec(key, rows, k, out_features)
        w_int = None
        if self.party == SERVER:
            if weight is None or weight.shape != (k, out_features):
                raise ValueError(f"server must supply weight {key!r} of shape {(k, out_features)}")
            w_int = self.matrices.encode(key, weight, self.fxp)
        mask = self.source.linear_mask(spec, w_int)
        x2 = x.reshape(rows, k)
        if self.party == CLIENT:
            assert mask.r is not None
            self.ch.send_array("linear", x2 - mask.r)
            y = mask.share.copy()
        else:
            z = self.ch.recv_array("linear", (rows, k), U64)
            y = ring_matmul_public(x2 + z, w_int) + mask.share
            if bias is not None:
                y += from_signed(np.rint(np.asarray(bias) * self.fxp.scale**2).astype(np.int64))
        return self.trunc(y).reshape(*lead, out_features)
