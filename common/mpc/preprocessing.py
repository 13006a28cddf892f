"""The offline phase: plan a program, then produce its correlations.

`HeProvider` (default) produces everything with the two parties only, under BFV with
the client's key (`common.mpc.he_protocols`). `InsecureDealer` produces the same
correlations from a seed both parties know — each party can compute the other's
shares, so it is for tests and benchmarks of higher layers only, and warns.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Generator, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from common.he.compact import compact_bytes
from common.he.crt_bfv import CrtBfvClient, CrtBfvParams, CrtBfvServer
from common.he.executor import HeExecutor
from common.mpc.correlations import (
    Bind,
    GroupSpec,
    LinearMask,
    MaskGroup,
    Plan,
    PlanRecorder,
    Pool,
    PreprocessingError,
)
from common.mpc.engine import Mpc
from common.mpc.he_protocols import (
    cross_matmul_bytes,
    cross_matmul_layout,
    galois_elements_for,
    he_cross_matmul_many_deferred,
    he_matmul_many_deferred,
    he_products_deferred,
    he_track_products_deferred,
    matmul_layout,
    pack_blobs,
    products_chunk_bytes,
    stream_groups,
    track_chunk_bytes,
    unpack_blobs,
    upload_bound,
)
from common.mpc.ring import (
    U64,
    FixedPoint,
    PublicMatrices,
    PublicMatrix,
    Ring,
    as_ints,
    new_rng,
    random_ring,
    ring_matmul,
    ring_matmul_public,
)
from common.mpc.roles import CLIENT, SERVER
from common.mpc.tracks import TrackLayout
from common.prg import SecureRng, require_secure
from common.transport import Channel, NullChannel, ProtocolMismatch

log = logging.getLogger(__name__)

# The server's encoded weight of a linear layer, in either form.
Weight = NDArray[np.int64] | PublicMatrix


class InsecureDealerWarning(UserWarning):
    """Raised (as a warning) whenever the test-only dealer is used."""


def plan_program(
    program: Callable[[Mpc], Any],
    party: int,
    fxp: FixedPoint | None = None,
    matrices: PublicMatrices | None = None,
) -> tuple[Plan, dict[str, Weight]]:
    """Run `program` alone on zeros to record its correlation requests (and, on the
    server, the encoded weights of its linear layers, memoised in `matrices` if given).
    No communication."""
    rec = PlanRecorder()
    program(Mpc(NullChannel(party), rec, fxp, matrices=matrices))
    return rec.plan, rec.weights


def _check_digest(ch: Channel, mine: bytes) -> None:
    """Read the peer's plan digest (`plan.digest`) and compare it with ours."""
    theirs = ch.recv_array("plan.digest", (len(mine),), np.uint8).tobytes()
    if theirs != mine:
        raise ProtocolMismatch("the parties planned different programs")


def run_stages(
    ch: Channel, plans: list[tuple[str, Generator[None, None, Pool]]]
) -> dict[str, Pool]:
    """Run `HeProvider.stages` of consecutive plans overlapped, each under its layer's
    label: 1(0) 2(0), then for each next plan t: 1(t) 3(t−1) 2(t), and 3 of the last.
    The next plan's uploads thus go up before this plan's last returns are read, and
    the server never waits between plans. Both parties run this same order (the
    messages match, since the client reads nothing in a stage 1). Returns the Pools by
    layer."""
    pools: dict[str, Pool] = {}

    def step(i: int) -> None:
        layer, gen = plans[i]
        with ch.scope(layer=layer or None):
            try:
                next(gen)
            except StopIteration as done:
                pools[layer] = done.value

    for t in range(len(plans)):
        step(t)
        if t:
            step(t - 1)
        step(t)
    if plans:
        step(len(plans) - 1)
    return pools


def _agree(ch: Channel, plan: Plan) -> None:
    """Both parties must have planned the same program (1 round, 32 bytes each)."""
    mine = plan.digest()
    theirs = ch.exchange_array("plan.digest", np.frombuffer(mine, dtype=np.uint8)).tobytes()
    if theirs != mine:
        raise ProtocolMismatch("the parties planned different programs")


class HeProvider:
    """Correlations from BFV-CRT, client-keyed. One instance per party per session."""

    name = "he"

    def __init__(
        self,
        params: CrtBfvParams | None = None,
        rng: SecureRng | None = None,
        weight_bits: int = 28,
        executor: HeExecutor | None = None,
    ) -> None:
        # weight_bits is public (both parties size the CRT basis with it): the server's
        # encoded weights must satisfy |W| < 2^weight_bits.
        self.params = params or CrtBfvParams()
        self.weight_bits = weight_bits
        self.rng = new_rng() if rng is None else require_secure(rng, type(self).__name__)
        self.he: CrtBfvClient | CrtBfvServer | None = None
        # The linear masks' HE objects (`CrtBfvParams.linear`; `he` itself without a
        # chain of their own)
        self.he_linear: CrtBfvClient | CrtBfvServer | None = None
        # Where the server's HE work runs (None: this thread); the client's is light.
        self.executor = executor

    def requirements(self, plan: Plan) -> tuple[int, int]:
        """(largest message, peak working bytes) of this plan's HE offline phase on the
        server, from the public shapes only (upper bounds: uploads at their bound
        `upload_bound`, returns exact), so that a session can be refused before any
        work. The server streams each batch's jobs through its workers (`_stream`):
        at most `2·workers + 1` jobs are held at once (made, running, or done and
        unsent), so the working set is that many of the largest jobs' uploads, returns
        and masks; a matrix product's jobs hold its whole uploads, so for those it is
        that many of the largest products."""
        params = self.params
        N = params.slots
        up_b = params.upload_bytes
        down_b = compact_bytes(N)
        frame = work = 0
        workers = 1 if self.executor is None else self.executor.workers
        flight = 2 * workers + 1
        products: list[int] = []

        def matmul(
            m: int,
            k: int,
            n: int,
            rhs_bits: int,
            useful: int,
            cross: bool = False,
            linear: bool = False,
        ) -> None:
            nonlocal frame, work
            if cross:
                lay = cross_matmul_layout(params, (m, k, n))
            else:
                lay = matmul_layout(params.linear() if linear else params, (m, k, n), rhs_bits)
            P, blk = lay.primes, lay.blocking
            Mb, Kb, Nb = blk.grid
            up = upload_bound(params, Mb * Kb + (Kb * Nb if cross else 0))
            down = 4 + Mb * len(lay.groups()) * (4 + compact_bytes(N, 0)) + 8 * useful
            frame = max(frame, up, down)
            products.append(P * (up + down) + (3 + P) * Mb * Nb * N * 8)

        def simd(slots: int, ups_per_chunk: int, outs_per_chunk: int, P: int) -> None:
            nonlocal frame, work
            chunks = -(-slots // N)
            up = upload_bound(params, P * ups_per_chunk)
            down = 4 + P * outs_per_chunk * (4 + down_b)
            frame = max(frame, up, down)
            cost = products_chunk_bytes(params, P, ups_per_chunk)
            jobs = stream_groups(self.executor, [cost] * chunks, -(-8 // (P * ups_per_chunk)))
            held = sum(sorted(g.size * cost for g in jobs)[-flight:])
            work = max(work, held + chunks * N * 8)

        for spec in plan.linears:
            matmul(spec.rows, spec.k, spec.n, self._weight_bits(plan), spec.rows * spec.n,
                   linear=True)  # fmt: skip
        for (*batch, m, k, n), _ in plan.matmul_specs():
            count = int(np.prod(batch, dtype=np.int64)) if batch else 1
            g = matmul_group_size(count, m, k, n, params)
            matmul(g * m, k, g * n, 63, g * m * n, cross=True)
        P3 = params.primes_for(129)
        if plan.triples:
            simd(plan.triples, 2, 1, P3)
        if plan.squares:
            simd(plan.squares, 1, 1, P3)
        if plan.wraps:
            simd(plan.wraps, 1, 1, 1)
        if plan.groups:
            layout = TrackLayout(plan.groups, N, up_b, down_b)
            ups = [upload_bound(params, P3 * len(t)) for t in layout.chunk_tracks]
            downs = [4 + P3 * len(o) * (4 + down_b) for o in layout.chunk_outputs]
            frame = max(frame, *ups, *downs)
            # the largest jobs' uploads, returns and masks, and the server's operands
            # of the whole batch (≤ 2 per output slot)
            per_chunk = track_chunk_bytes(params, layout)
            jobs = [sum(per_chunk[c] for c in g) for g in stream_groups(self.executor, per_chunk)]
            work = max(work, sum(sorted(jobs)[-flight:]) + 16 * layout.output_slots)
        work = max(work, sum(sorted(products)[-flight:]))
        return frame, work

    def _weight_bits(self, plan: Plan) -> int:
        """The public bound on this plan's encoded linear weights: the plan's (from the
        model card) or this provider's generic one."""
        return self.weight_bits if plan.weight_bits is None else plan.weight_bits

    def exposure(self, plan: Plan) -> int:
        """How many masked, flooded coefficients this plan's HE offline phase returns to
        the client (counted against `CrtBfvParams.exposure_limit` by the server as it
        goes, `CrtBfvServer.expose`): from the public shapes, exactly."""
        params = self.params
        N = params.slots
        total = 0
        for spec in plan.linears:
            shape = (spec.rows, spec.k, spec.n)
            P = matmul_layout(params.linear(), shape, self._weight_bits(plan)).primes
            total += P * spec.rows * spec.n
        for (*batch, m, k, n), _ in plan.matmul_specs():
            count = int(np.prod(batch, dtype=np.int64)) if batch else 1
            g = matmul_group_size(count, m, k, n, params)
            P = cross_matmul_layout(params, (g * m, k, g * n)).primes
            total += P * count * m * n
        P3 = params.primes_for(129)
        total += P3 * N * (-(-plan.triples // N) + -(-plan.squares // N))
        total += N * -(-plan.wraps // N)
        if plan.groups:
            layout = TrackLayout(plan.groups, N, params.upload_bytes, compact_bytes(N))
            total += P3 * N * sum(len(o) for o in layout.chunk_outputs)
        return total

    def setup(self, ch: Channel) -> None:
        """Key setup: the client generates keys and sends its public keys (~0.4 MB per
        prime and chain: the main one, and the linear masks' own if they have one,
        `CrtBfvParams.linear`, under a key of its own). Rounds: 1 (one way)."""
        lin = self.params.linear()
        with ch.scope(phase="setup", op="he-keys"):
            if ch.party == CLIENT:
                self.he = CrtBfvClient(self.params)
                self.he_linear = self.he if lin is self.params else CrtBfvClient(lin)
                pks = self.he.public_keys()
                if self.he_linear is not self.he:
                    pks += self.he_linear.public_keys()
                ch.send("he.pk", pack_blobs(pks), kind="he-keys", shape=(len(pks),))
            else:
                chains = 1 if lin is self.params else 2
                n = self.params.max_primes
                pks = unpack_blobs(ch.recv("he.pk"), chains * n)
                self.he = CrtBfvServer(self.params, pks[:n], self.rng)
                self.he_linear = self.he
                if chains == 2:
                    self.he_linear = CrtBfvServer(lin, pks[n:], self.rng)
                    self.he_linear.share_exposure(self.he)

    def generate(
        self, ch: Channel, plan: Plan, weights: Mapping[str, Weight] | None = None
    ) -> Pool:
        """Produce this party's share of every correlation in `plan` (its `stages` one
        after another).

        Rounds: 1 (plan check) + 2 per kind present (+2 per matrix product).
        """
        return run_stages(ch, [("", self.stages(ch, plan, weights))])[""]

    def stages(
        self, ch: Channel, plan: Plan, weights: Mapping[str, Weight] | None = None
    ) -> Generator[None, None, Pool]:
        """`generate` in three stages, a generator that pauses twice and returns the
        Pool: (1) the plan check is sent and the uploads that need no linear output go
        up (linear masks, Beaver triples, squares, wrap bits); (2) the linear masks'
        returns are read and the uploads that take their outputs go up (mask groups,
        matrix triples); (3) the other returns are read. Each kind is sent, then
        finished (`he_products_deferred`); the server works kind after kind in this
        order, at the time the client sends, so it finds its next kind's uploads
        waiting, and the client encrypts and decrypts while the server computes.
        `run_stages` overlaps consecutive plans' stages (the next plan's stage 1 before
        this one's stage 3). The client reads nothing in stage 1, so that stage may run
        while the previous plan's returns are still on their way. No channel scope is
        held across a pause (the driver sets the layer)."""
        if self.he is None:
            self.setup(ch)
        he = self.he
        client = ch.party == CLIENT
        rng = self.rng
        wbits = self._weight_bits(plan)
        lin = self.he_linear
        assert lin is not None
        # ---- stage 1
        with ch.scope(phase="offline"):
            # The plan check, one way each: the server reads the client's now (it came
            # first), the client reads the server's in stage 2, behind the previous
            # plan's returns.
            mine = plan.digest()
            ch.send_array("plan.digest", np.frombuffer(mine, dtype=np.uint8))
            if not client:
                _check_digest(ch, mine)
            # Linear masks first: bound masks (`Bind`) take the client's output shares.
            self._galois_keys(ch, plan, wbits)
            with ch.scope(op="linear-masks"):
                # all of the segment's linear layers in one pipelined batch
                if client:
                    rs = [random_ring(rng, (spec.rows, spec.k)) for spec in plan.linears]
                    items = [
                        (r, (spec.rows, spec.k, spec.n), wbits, None)
                        for r, spec in zip(rs, plan.linears, strict=True)
                    ]
                else:
                    items = []
                    for spec in plan.linears:
                        if weights is None or spec.key not in weights:
                            raise KeyError(f"server has no weight {spec.key!r}")
                        w = as_ints(weights[spec.key])
                        if w.size and int(np.abs(w).max()) >= 1 << wbits:
                            raise ValueError(
                                f"weight {spec.key!r} exceeds the public bound 2^{wbits}"
                            )
                        items.append((w, (spec.rows, spec.k, spec.n), wbits, None))
                linear_done = he_matmul_many_deferred(ch, lin, items, rng, self.executor)
            with ch.scope(op="triples"):
                n = plan.triples
                a, b = random_ring(rng, n), random_ring(rng, n)
                triples_done = (
                    he_products_deferred(ch, he, [a, b] if client else [b, a], rng, self.executor)
                    if n
                    else lambda: np.zeros(0, U64)
                )
            with ch.scope(op="squares"):
                n = plan.squares
                sq = random_ring(rng, n)
                squares_done = (
                    he_products_deferred(
                        ch, he, [sq if client else U64(2) * sq], rng, self.executor
                    )
                    if n
                    else lambda: sq[:0]
                )
            with ch.scope(op="wraps"):
                wraps_done = self._wraps(ch, plan.wraps)
        yield
        # ---- stage 2
        with ch.scope(phase="offline"):
            if client:
                _check_digest(ch, mine)
            with ch.scope(op="linear-masks"):
                shares = linear_done()
                linears = [
                    LinearMask(spec, share, rs[t] if client else None)
                    for t, (spec, share) in enumerate(zip(plan.linears, shares, strict=True))
                ]
                outputs: dict[str, Ring] = (
                    {spec.key: sh for spec, sh in zip(plan.linears, shares, strict=True)}
                    if client
                    else {}
                )
            with ch.scope(op="mask-groups"):
                groups_done = self._groups(ch, plan.groups, outputs)
            with ch.scope(op="matmul-triples"):
                matmuls_done = self._matmul_triples(ch, plan.matmul_specs(), outputs)
        yield
        # ---- stage 3
        with ch.scope(phase="offline"):
            with ch.scope(op="triples"):
                triples = (a, b, a * b + triples_done())
            with ch.scope(op="squares"):
                squares = (sq, sq * sq + squares_done())
            with ch.scope(op="wraps"):
                wraps = wraps_done()
            with ch.scope(op="mask-groups"):
                groups = groups_done()
            with ch.scope(op="matmul-triples"):
                matmuls = matmuls_done()
        return Pool(triples, squares, matmuls, linears, groups, wraps)

    def _galois_keys(self, ch: Channel, plan: Plan, wbits: int) -> None:
        """Send (client) / receive (server) the Galois keys the plan's merged linear
        masks need (`MatmulLayout.merge`), once per session: public, from the public
        shapes, ≈ 0.75 MB per element and prime. Rounds: 1 if any are new, else 0."""
        he = self.he_linear
        assert he is not None
        layouts = [matmul_layout(he.params, (s.rows, s.k, s.n), wbits) for s in plan.linears]
        need = set(galois_elements_for(he.params, layouts))
        have = set(he.galois_elements)
        if need <= have:
            return
        elements = sorted(need | have)
        P = max(lay.primes for lay in layouts if lay.merge > 1)
        with ch.scope(op="galois-keys"):
            if ch.party == CLIENT:
                assert isinstance(he, CrtBfvClient)
                blobs = [he.galois_keys(i, elements) for i in range(P)]
                ch.send("he.gk", pack_blobs(blobs), kind="he-keys", shape=(len(blobs),))
            else:
                bound = 2 * 8 * P * len(elements) * len(he.params.coeff_bits) ** 2 * he.params.slots
                blobs = unpack_blobs(ch.recv("he.gk", max_bytes=bound), P)
                for i, blob in enumerate(blobs):
                    he.load_galois_keys(i, blob)  # refuse malformed keys before any work
                he.galois_blobs = tuple(blobs)
        he.galois_elements = tuple(elements)

    def _wraps(self, ch: Channel, n: int) -> Callable[[], tuple[NDArray[np.uint8], Ring]]:
        """n bit triples for `Mpc.wrap_bits`: a random bit each (u: server, v: client)
        and shares of u·v, by `he_products` on 1-bit operands (one CRT prime, a mask
        uniform mod p; about 45 bytes per triple in all at the default parameters; 2
        rounds), as a `finish` to call (`he_products_deferred`)."""
        bits = self.rng.random_bits(n)
        if not n:
            return lambda: (bits, np.zeros(0, U64))
        done = he_products_deferred(
            ch, self.he, [bits.astype(U64)], self.rng, self.executor, operand_bits=1
        )
        return lambda: (bits, done())

    def _groups(
        self, ch: Channel, specs: list[GroupSpec], outputs: Mapping[str, Ring]
    ) -> Callable[[], list[MaskGroup]]:
        """Every group's masks at random (a bound mask's client share: the client's
        linear output share, see `Bind`); their planned products in one SIMD batch over
        all groups in which each mask goes up once (`common.mpc.tracks`; 2 rounds), as
        a `finish` to call (`he_products_deferred`)."""
        if not specs:
            return lambda: []
        rng, he = self.rng, self.he
        client = ch.party == CLIENT
        masks = [
            [_mask_share(rng, shp, spec.bind(i), outputs, client) for i, shp in enumerate(sh)]
            for spec, sh in ((sp, sp.shapes) for sp in specs)
        ]
        layout = TrackLayout(specs, he.params.slots, he.params.upload_bytes, he.return_size())
        ops = layout.uploads(masks) if client else layout.terms(masks)
        done = he_track_products_deferred(ch, he, layout, ops, rng, self.executor)

        def finish() -> list[MaskGroup]:
            products = layout.products(masks, done(), specs)
            return [
                MaskGroup(spec, ms, prods)
                for spec, ms, prods in zip(specs, masks, products, strict=True)
            ]

        return finish

    def _matmul_triples(
        self,
        ch: Channel,
        specs: list[tuple[tuple[int, ...], tuple[Bind | None, Bind | None]]],
        outputs: Mapping[str, Ring],
    ) -> Callable[[], list[tuple[Ring, Ring, Ring]]]:
        """As a `finish` to call (`he_products_deferred`): batches of matrix triples
        C = A·B (A: …×m×k, B: …×k×n): both cross terms a_c·b_s + a_s·b_c in one HE product
        (`he_cross_matmul_many`: the client uploads a_c and b_c, the server multiplies by
        b_s and a_s and returns the sum once), all of a segment's in one pipelined batch (2
        rounds). Small matrices (one head's attention) would each fill whole ciphertexts, so
        `g` of them (chosen by `matmul_group_size`) are stacked into one (g·m)×k by k×(g·n)
        product whose diagonal blocks are the g wanted products; the server returns c0 only
        at the diagonal blocks' coefficients (`wanted`), so the off-diagonal ones cannot
        even be decrypted."""
        rng, he = self.rng, self.he
        assert he is not None
        client = ch.party == CLIENT
        items: list[tuple[NDArray, tuple[int, int, int], int, NDArray[np.bool_] | None]] = []
        layout = []  # per spec: a, b, and the groups' (indices, item positions)
        for shape, binds in specs:
            *batch, m, k, n = shape
            a = _mask_share(rng, (*batch, m, k), binds[0], outputs, client)
            b = _mask_share(rng, (*batch, k, n), binds[1], outputs, client)
            count = int(np.prod(batch, dtype=np.int64)) if batch else 1
            af, bf = a.reshape(count, m, k), b.reshape(count, k, n)
            g = matmul_group_size(count, m, k, n, he)
            groups = []
            for grp in np.array_split(np.arange(count), -(-count // g)):
                h = len(grp)
                ag, bg = af[grp], bf[grp]
                # A's stacked by rows, B's by columns: the (h·m)×(h·n) product's diagonal
                # blocks are the h products. Both cross terms a_c·b_s + a_s·b_c in one.
                lhs = ag.reshape(h * m, k)
                rhs = bg.transpose(1, 0, 2).reshape(k, h * n)
                if not client:
                    lhs, rhs = lhs.view(np.int64), rhs.view(np.int64)
                groups.append((grp, len(items)))
                items.append((lhs, rhs, (h * m, k, h * n), (m, n)))
            layout.append((shape, a, b, af, bf, groups))
        done = he_cross_matmul_many_deferred(ch, he, items, rng, self.executor)

        def finish() -> list[tuple[Ring, Ring, Ring]]:
            shares = done()
            out = []
            for shape, a, b, af, bf, groups in layout:
                *batch, m, _, n = shape
                c = np.empty((af.shape[0], m, n), U64)
                for grp, pos in groups:
                    s = shares[pos]
                    for t, idx in enumerate(grp):
                        d = s[t * m : (t + 1) * m, t * n : (t + 1) * n]
                        c[idx] = ring_matmul(af[idx], bf[idx]) + d
                out.append((a, b, c.reshape(*batch, m, n)))
            return out

        return finish


def matmul_group_size(
    count: int, m: int, k: int, n: int, he: CrtBfvClient | CrtBfvServer | CrtBfvParams
) -> int:
    """How many of `count` independent m×k·k×n products share one stacked HE product:
    the g that minimises the bytes of the cross product (uploads + returns of one
    prime, from the coefficient packing's block choice), then its ct×pt products.
    Public: both parties compute it from the shapes and the HE parameters (`he`: the
    parameters, or a party's HE objects)."""
    params = he if isinstance(he, CrtBfvParams) else he.params
    best: tuple[tuple[int, int], int] | None = None
    for g in range(1, count + 1):
        nbytes = products = 0
        # `count` split into ceil(count/g) near-equal groups (as `np.array_split` cuts)
        calls = -(-count // g)
        small, extra = divmod(count, calls)
        for size, groups in ((small + 1, extra), (small, calls - extra)):
            if not groups:
                continue
            blk = cross_matmul_layout(params, (size * m, k, size * n)).blocking
            nbytes += groups * cross_matmul_bytes(params, blk)
            products += groups * 2 * blk.products
        if best is None or (nbytes, products) < best[0]:
            best = ((nbytes, products), g)
    assert best is not None
    return best[1]


class InsecureDealer:
    """TEST ONLY: both parties expand one seed into the correlations.

    Party 0 sends the seed in the clear, so either party can compute the other's
    shares: no security at all. Linear masks need the server's weights, so the server
    sends the client its share of r·W (8 bytes per output).
    """

    name = "insecure_dealer"

    def __init__(self, rng: SecureRng | None = None) -> None:
        warnings.warn(
            "insecure_dealer: correlations come from a shared seed; NOT SECURE (tests only)",
            InsecureDealerWarning,
            stacklevel=2,
        )
        log.warning("insecure_dealer provider in use: no security")
        self.rng = new_rng() if rng is None else require_secure(rng, type(self).__name__)

    def requirements(self, plan: Plan) -> tuple[int, int]:
        """(largest message, peak working bytes) of the dealer's offline phase: the
        seed, and the client's share of each linear output (8 bytes per entry)."""
        frame = max((8 * s.rows * s.n for s in plan.linears), default=32)
        return frame, frame

    def setup(self, ch: Channel) -> None:
        pass

    def generate(
        self, ch: Channel, plan: Plan, weights: Mapping[str, Weight] | None = None
    ) -> Pool:
        with ch.scope(phase="offline", op="insecure-dealer"):
            _agree(ch, plan)
            if ch.party == SERVER:
                seed = random_ring(self.rng, 4)
                ch.send_array("dealer.seed", seed)
            else:
                seed = ch.recv_array("dealer.seed", (4,), U64)
            # The same cryptographic generator keyed from the (public!) seed: the dealer
            # is insecure by design, not by its generator.
            g = SecureRng(seed.tobytes())
            me = ch.party

            def split(v: Ring) -> Ring:
                s0 = random_ring(g, v.shape)
                return s0 if me == SERVER else v - s0

            # Linear masks first: bound masks (`Bind`) take the client's output shares,
            # which both parties can compute here (u is sent in the clear).
            linears = []
            outputs: dict[str, Ring] = {}
            for spec in plan.linears:
                r = random_ring(g, (spec.rows, spec.k))
                s = random_ring(g, (spec.rows, spec.n))
                if me == SERVER:
                    if weights is None or spec.key not in weights:
                        raise KeyError(f"server has no weight {spec.key!r}")
                    u = ring_matmul_public(r, weights[spec.key]) - s
                    ch.send_array("dealer.linear", u)
                    linears.append(LinearMask(spec, s))
                else:
                    u = ch.recv_array("dealer.linear", (spec.rows, spec.n), U64).copy()
                    linears.append(LinearMask(spec, u, r))
                outputs[spec.key] = u

            def mask(shape: tuple[int, ...], bind: Bind | None) -> tuple[Ring, Ring]:
                """(the full mask, this party's share)."""
                if bind is None:
                    v = random_ring(g, shape)
                    return v, split(v)
                srv = random_ring(g, shape)
                cli = _mask_share(g, shape, bind, outputs, client=True)
                return srv + cli, srv if me == SERVER else cli

            n = plan.triples
            a, b = random_ring(g, n), random_ring(g, n)
            triples = (split(a), split(b), split(a * b))
            a = random_ring(g, plan.squares)
            squares = (split(a), split(a * a))
            u, v = g.random_bits(plan.wraps), g.random_bits(plan.wraps)
            uv = split((u & v).astype(U64))
            wraps = (u if me == SERVER else v, uv)
            matmuls = []
            for (*batch, m, k, nn), (ba, bb) in plan.matmul_specs():
                A, a_me = mask((*batch, m, k), ba)
                B, b_me = mask((*batch, k, nn), bb)
                matmuls.append((a_me, b_me, split(ring_matmul(A, B))))
            full, mine = [], []
            for spec in plan.groups:
                pairs = [mask(shp, spec.bind(i)) for i, shp in enumerate(spec.shapes)]
                full.append([p[0] for p in pairs])
                mine.append([p[1] for p in pairs])
            sq_in, left, right = _pair_operands(plan.groups, full)
            groups = _assemble_groups(plan.groups, mine, split(sq_in * sq_in), split(left * right))
        return Pool(triples, squares, matmuls, linears, groups, wraps)


def _mask_share(
    rng: SecureRng,
    shape: tuple[int, ...],
    bind: Bind | None,
    outputs: Mapping[str, Ring],
    client: bool,
) -> Ring:
    """This party's share of a fresh mask: uniform, except the client's share of a
    bound mask, which is its share of the linear output the bind names."""
    if bind is None or not client:
        return random_ring(rng, shape)
    if bind.key not in outputs:
        raise PreprocessingError(f"bound mask refers to linear {bind.key!r} outside this plan")
    share = bind.apply(outputs[bind.key])
    if share.shape != tuple(shape):
        raise PreprocessingError(f"bound view {share.shape} does not match mask {shape}")
    return share


def _pair_operands(specs: list[GroupSpec], masks: list[list[Ring]]) -> tuple[Ring, Ring, Ring]:
    """Flat operands of every group's planned products, in plan order: the masks to
    square, and the left and right factors of the cross products (broadcast to the
    product's shape)."""
    sq: list[Ring] = []
    left: list[Ring] = []
    right: list[Ring] = []
    for spec, ms in zip(specs, masks, strict=True):
        for i, j in spec.pairs:
            shape = spec.pair_shape(i, j)
            if i == j:
                sq.append(np.broadcast_to(ms[i], shape).ravel())
            else:
                left.append(np.broadcast_to(ms[i], shape).ravel())
                right.append(np.broadcast_to(ms[j], shape).ravel())
    cat = lambda v: np.concatenate(v) if v else np.zeros(0, U64)  # noqa: E731
    return cat(sq), cat(left), cat(right)


def _assemble_groups(
    specs: list[GroupSpec], masks: list[list[Ring]], sq: Ring, cross: Ring
) -> list[MaskGroup]:
    """Split the flat product shares of `_pair_operands` back into groups."""
    out, ps, pc = [], 0, 0
    for spec, ms in zip(specs, masks, strict=True):
        prods: dict[tuple[int, int], Ring] = {}
        for i, j in spec.pairs:
            shape = spec.pair_shape(i, j)
            n = int(np.prod(shape))
            if i == j:
                prods[(i, j)] = sq[ps : ps + n].reshape(shape)
                ps += n
            else:
                prods[(i, j)] = cross[pc : pc + n].reshape(shape)
                pc += n
        out.append(MaskGroup(spec, ms, prods))
    return out


def make_provider(
    name: str, params: CrtBfvParams | None = None, executor: HeExecutor | None = None
) -> HeProvider | InsecureDealer:
    """Provider by name: "he" (default, secure) or "insecure_dealer" (tests only).
    `executor`: where the server's HE work runs (`common.he.executor`)."""
    if name == "he":
        return HeProvider(params, executor=executor)
    if name == "insecure_dealer":
        return InsecureDealer()
    raise ValueError(f"unknown provider {name!r} (choose 'he' or 'insecure_dealer')")
