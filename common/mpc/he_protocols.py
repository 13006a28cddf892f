"""Two-party HE protocols that turn products of the parties' private values into shares.

Both return additive shares over Z_{2^64} of an exact integer product, computed under
several BFV plaintext primes (CRT). The client encrypts, the server multiplies by its
plaintexts, adds an integer mask r < 2^σ (`CrtBfvParams.mask_bits`: value bits + 42 +
log2 of the session's exposure limit) and seals the result
(`CrtBfvServer.seal_result`); the client decrypts and reconstructs v + r, and the
server keeps −r mod 2^64.

Rounds: 2 (client → server → client), whatever the batch size.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from common.he.compact import compact_bytes
from common.he.crt import mulmod_const
from common.he.crt_bfv import CrtBfvClient, CrtBfvParams, CrtBfvServer
from common.he.executor import HeExecutor
from common.he.galois_merge import galois_elements, group_keep, group_layout
from common.he.packing import Blocking, choose_blocking, diagonal_blocks
from common.he.server_jobs import (
    MatmulJob,
    ProductsJob,
    TrackProductsJob,
    matmul_in_worker,
    products_in_worker,
    run_matmul,
    run_products,
    run_track_products,
    track_products_in_worker,
)
from common.mpc.ring import U64, Ring, random_ring
from common.mpc.roles import CLIENT
from common.mpc.tracks import TrackLayout, chunk
from common.prg import SecureRng
from common.transport import Channel


def pack_blobs(blobs: list[bytes]) -> bytes:
    """Length-prefixed concatenation (uint32 count, then uint32 length + bytes each)."""
    parts = [struct.pack("<I", len(blobs))]
    for b in blobs:
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def upload_bound(params: CrtBfvParams, count: int) -> int:
    """Most bytes a batch of `count` client ciphertexts (seeded, SEAL-serialized) may
    take: c0 at every level plus 1% and 4 KiB of slack for the serialization, each."""
    one = params.upload_max
    return 4 + count * (4 + one + one // 100 + 4096)


def batch_size(sizes: list[int]) -> int:
    """Exact bytes of `pack_blobs` for blobs of these sizes."""
    return 4 + sum(4 + s for s in sizes)


def unpack_blobs(data: bytes, expected: int) -> list[bytes]:
    (count,) = struct.unpack_from("<I", data)
    if count != expected:
        raise ValueError(f"expected {expected} ciphertexts, got {count}")
    out, pos = [], 4
    for _ in range(count):
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + size > len(data):
            raise ValueError("truncated ciphertext batch")
        out.append(data[pos : pos + size])
        pos += size
    if pos != len(data):
        raise ValueError("trailing bytes after ciphertext batch")
    return out


def _perfect_mask(
    rng: SecureRng, p: int, shape: tuple[int, ...]
) -> tuple[Ring, NDArray[np.uint64]]:
    """(server share −r mod 2^64, (1, …) residues of r mod p) for r uniform in the
    centred range [−(p−1)/2, (p−1)/2] (p odd): a one-time pad mod p."""
    half = (p - 1) // 2
    r0 = rng.below(p, math.prod(shape)).reshape(shape)  # uniform in [0, p)
    share = (np.int64(half) - r0).astype(U64)  # −r = half − r0
    res = (r0.astype(U64) + U64(p - half)) % U64(p)  # r mod p = r0 − half mod p
    return share, res[None]


def _mask(rng: SecureRng, bits: int, shape: tuple[int, ...]) -> list[Ring]:
    """Uniform integers below 2^bits as little-endian uint64 limbs."""
    limbs = [random_ring(rng, shape) for _ in range(math.ceil(bits / 64))]
    top = bits - 64 * (len(limbs) - 1)
    if top < 64:
        limbs[-1] &= U64((1 << top) - 1)
    return limbs


def he_products(
    ch: Channel,
    he: CrtBfvClient | CrtBfvServer,
    operands: list[Ring],
    rng: SecureRng,
    executor: HeExecutor | None = None,
    operand_bits: int = 64,
) -> Ring:
    """Shares of Σ_j x_j ⊙ y_j mod 2^64 (`he_products_deferred`, finished at once)."""
    return he_products_deferred(ch, he, operands, rng, executor, operand_bits)()


def he_products_deferred(
    ch: Channel,
    he: CrtBfvClient | CrtBfvServer,
    operands: list[Ring],
    rng: SecureRng,
    executor: HeExecutor | None = None,
    operand_bits: int = 64,
) -> Callable[[], Ring]:
    """Shares of Σ_j x_j ⊙ y_j mod 2^64 (client holds the x_j, server the y_j), as a
    `finish` to call: the client sends its uploads now and receives the returns when
    it calls `finish` (so it may send other batches' uploads, or read earlier
    batches' returns, in between, while the server works); the server does all its
    work now, and `finish` just gives its share.

    Each party passes its own list of equal-length uint64 vectors (same count J) of
    values below 2^operand_bits (public; 1 for bits: one CRT prime and a mask uniform
    mod p). Cost per N = 8192 values and prime: J seeded ciphertexts up (~27.5 B/value
    at [60,60,60,21]) and one down (17 B/value); primes: `primes_for(2·operand_bits +
    log2 J)`; rounds: 2.
    """
    params = he.params
    N = params.slots
    J = len(operands)
    n = operands[0].size
    value_bits = 2 * operand_bits + math.log2(J)
    # Bit products (a sum of J ≤ 2 products of bits) take one prime and a mask uniform
    # mod p, which hides them perfectly; one comes out wrong only if v + r leaves the
    # centred range mod p: probability ≤ J/p < 2^-56 (docs/SECURITY.md). Wider
    # products take a statistical mask (`CrtBfvParams.mask_bits`).
    perfect = operand_bits == 1 and J <= 2
    P = 1 if perfect else params.primes_for(value_bits)
    chunks = math.ceil(n / N)

    if ch.party == CLIENT:
        assert isinstance(he, CrtBfvClient)
        for c in range(chunks):
            blobs = [
                he.encrypt(i, chunk(x, c, N) % U64(he.primes[i].p))
                for i in range(P)
                for x in operands
            ]
            ch.send("he.prod.up", pack_blobs(blobs), kind="ciphertexts", shape=(len(blobs),))
        client = he

        def receive() -> Ring:
            basis = client.basis(P)
            down = client.return_size()
            out = np.empty(chunks * N, dtype=U64)
            for c in range(chunks):
                raws = unpack_blobs(ch.recv("he.prod.down", batch_size([down] * P)), P)
                res = [client.decrypt(i, client.load_result(i, raws[i])) for i in range(P)]
                out[c * N : (c + 1) * N] = basis.to_ring(res)
            return out[:n]

        return receive

    assert isinstance(he, CrtBfvServer)
    flood = params.flood_bits(J, he.primes[0].p / 2)
    basis = he.basis(P)
    bound = upload_bound(params, P * J)
    share = np.empty((chunks, N), dtype=U64)

    def jobs() -> Iterator[ProductsJob]:
        # one job per few chunks, made as its uploads arrive (`_stream`)
        costs = [products_chunk_bytes(params, P, J)] * chunks
        for g in stream_groups(executor, costs, math.ceil(8 / (P * J))):
            ups = [unpack_blobs(ch.recv("he.prod.up", max_bytes=bound), P * J) for _ in g]
            he.expose(g.size * N * P)
            if perfect:
                share[g], mask_res = _perfect_mask(rng, he.primes[0].p, (g.size, N))
            else:
                limbs = _mask(rng, params.mask_bits(value_bits), (g.size, N))
                share[g] = -limbs[0]
                mask_res = np.stack(basis.residues_of_limbs(limbs))  # (P, g, N)
            ys = np.stack([np.stack([chunk(y, c, N) for y in operands]) for c in g])
            yield ProductsJob(params, he.public_key_blobs, P, ups, ys, mask_res, flood)

    for per_chunk in _stream(ch, executor, he, run_products, products_in_worker, jobs()):
        for raws in per_chunk:
            ch.send("he.prod.down", pack_blobs(raws), kind="ciphertexts", shape=(len(raws),))
    done = share.reshape(-1)[:n]
    return lambda: done


def he_track_products(
    ch: Channel,
    he: CrtBfvClient | CrtBfvServer,
    layout: TrackLayout,
    operands: list[Ring] | list[dict[int, Ring]],
    rng: SecureRng,
    executor: HeExecutor | None = None,
) -> list[Ring]:
    """`he_track_products_deferred`, finished at once."""
    return he_track_products_deferred(ch, he, layout, operands, rng, executor)()


def he_track_products_deferred(
    ch: Channel,
    he: CrtBfvClient | CrtBfvServer,
    layout: TrackLayout,
    operands: list[Ring] | list[dict[int, Ring]],
    rng: SecureRng,
    executor: HeExecutor | None = None,
) -> Callable[[], list[Ring]]:
    """As a `finish` to call (see `he_products_deferred`): shares of the mask-group
    outputs of `layout` (`common.mpc.tracks`): per output p a vector of
    `layout.output_extent[p]` slots holding Σ_t U_t ⊙ Y_{p,t} mod 2^64.

    The client passes its upload vectors (`layout.uploads`), the server its terms
    (`layout.terms`). Each upload vector goes up once, whatever the number of products
    it enters; at most two terms are non-zero per slot, so values stay below 2^129
    (4 primes with the session-level mask). Cost per N slots and prime: one seeded
    ciphertext up per track present (~27.5 B/slot), one return per output present
    (17 B/slot); rounds: 2 (the client sends every chunk before it reads; the server
    streams them through its workers a few chunks per job, `_stream`, so its memory
    for this batch is a few jobs' uploads, returns and masks).
    """
    params = he.params
    N = params.slots
    if layout.degree != N:
        raise ValueError(f"layout made for {layout.degree} slots, the HE ring has {N}")
    tracks, outs = layout.chunk_tracks, layout.chunk_outputs
    value_bits = 129.0  # ≤ 2 terms per slot, each a product of two ring elements
    P = params.primes_for(value_bits)
    sigma = params.mask_bits(value_bits)
    res = [np.empty(e, dtype=U64) for e in layout.output_extent]

    def put(p: int, c: int, vals: Ring) -> None:
        part = res[p][c * N : (c + 1) * N]
        part[:] = vals[: part.size]

    if ch.party == CLIENT:
        assert isinstance(he, CrtBfvClient)
        ups = operands
        basis = he.basis(P)
        down = he.return_size()
        # Every chunk's uploads first: the server computes them as they arrive and
        # the client decrypts the first returns while it computes the last.
        for c in range(len(tracks)):
            blobs = [
                he.encrypt(i, chunk(ups[t], c, N) % U64(he.primes[i].p))  # type: ignore[arg-type]
                for i in range(P)
                for t in tracks[c]
            ]
            ch.send("he.tp.up", pack_blobs(blobs), kind="ciphertexts", shape=(len(blobs),))
        client = he

        def receive() -> list[Ring]:
            for c in range(len(tracks)):
                n_out = len(outs[c])
                want = batch_size([down] * (P * n_out))
                raws = unpack_blobs(ch.recv("he.tp.down", want), P * n_out)
                for o, p in enumerate(outs[c]):
                    put(p, c, basis.to_ring(
                        [client.decrypt(i, client.load_result(i, raws[o * P + i]))
                         for i in range(P)]
                    ))  # fmt: skip
            return res

        return receive

    assert isinstance(he, CrtBfvServer)
    terms_of: list[dict[int, Ring]] = operands  # type: ignore[assignment]
    basis = he.basis(P)
    # the widest sum of the whole batch (at most the track count)
    flood = params.flood_bits(max(1, max(map(len, tracks), default=1)), he.primes[0].p / 2)
    groups = stream_groups(executor, track_chunk_bytes(params, layout))

    def jobs() -> Iterator[TrackProductsJob]:
        # one job per few chunks, made as their uploads arrive (`_stream`)
        for g in groups:
            ups = []
            for c in g:
                bound = upload_bound(params, P * len(tracks[c]))
                ups.append(unpack_blobs(ch.recv("he.tp.up", max_bytes=bound), P * len(tracks[c])))
            chunk_terms: list[list[list[tuple[int, Ring]]]] = []
            for c in g:
                pos = {t: k for k, t in enumerate(tracks[c])}
                per_out = []
                for p in outs[c]:
                    terms = []
                    for t, y in sorted(terms_of[p].items()):
                        yc = chunk(y, c, N)
                        if yc.any():
                            terms.append((pos[t], yc))
                    per_out.append(terms)
                chunk_terms.append(per_out)
            n_masks = sum(len(outs[c]) for c in g)
            he.expose(n_masks * N * P)
            limbs = _mask(rng, sigma, (n_masks, N))
            k = 0
            for c in g:
                for p in outs[c]:
                    put(p, c, -limbs[0][k])
                    k += 1
            mask_res = np.stack(basis.residues_of_limbs(limbs))  # (P, n_masks, N)
            yield TrackProductsJob(
                params, he.public_key_blobs, P, ups, chunk_terms, mask_res, flood
            )

    for per_chunk in _stream(
        ch, executor, he, run_track_products, track_products_in_worker, jobs()
    ):
        for per_out in per_chunk:
            raws = [r for rs in per_out for r in rs]
            ch.send("he.tp.down", pack_blobs(raws), kind="ciphertexts", shape=(len(raws),))
    return lambda: res


def _split(units: int, parts: int) -> list[NDArray[np.int64]]:
    return [g for g in np.array_split(np.arange(units), parts) if g.size]


JOB_BYTES = 64 << 20  # the most one streamed job holds (uploads, returns, masks)


def stream_groups(
    executor: HeExecutor | None, costs: list[int], min_units: int = 1
) -> list[NDArray[np.int64]]:
    """Consecutive units (of working-set bytes `costs`) cut into streamed jobs: about
    8 per worker, so that the first results go back while most of the work is still
    to come and the last job (the drain, when the client waits) is short; at least
    `min_units` units per job (a job's pickling and dispatch cost a few ms: tiny jobs,
    such as one-prime chunks of bit products, are worth batching); and none holding
    more than `JOB_BYTES` unless one unit does, so that the server's memory for a
    batch stays a few jobs' worth however large the batch (`HeProvider.requirements`).
    Public: both parties can compute it, though only the server needs to."""
    units = len(costs)
    workers = 1 if executor is None else executor.workers
    parts = max(1, min(units // max(1, min_units), 8 * workers))
    per = -(-units // parts) if units else 0
    out: list[NDArray[np.int64]] = []
    start = 0
    while start < units:
        end, held = start, 0
        while (
            end < units and end - start < per and (end == start or held + costs[end] <= JOB_BYTES)
        ):
            held += costs[end]
            end += 1
        out.append(np.arange(start, end, dtype=np.int64))
        start = end
    return out


def products_chunk_bytes(params: CrtBfvParams, P: int, J: int) -> int:
    """Bound on the server's working set for one chunk of `he_products` (P primes, J
    operands): its uploads at their bound, its returns, its mask residues."""
    N = params.slots
    return upload_bound(params, P * J) + 4 + P * (4 + compact_bytes(N)) + (3 + P) * N * 8


def track_chunk_bytes(params: CrtBfvParams, layout: TrackLayout) -> list[int]:
    """`products_chunk_bytes` for each chunk of a mask-group batch (`he_track_products`)."""
    N = params.slots
    P = params.primes_for(129.0)
    down = compact_bytes(N)
    return [
        upload_bound(params, P * len(t)) + 4 + P * len(o) * (4 + down) + len(o) * (3 + P) * N * 8
        for t, o in zip(layout.chunk_tracks, layout.chunk_outputs, strict=True)
    ]


def _stream(
    ch: Channel,
    executor: HeExecutor | None,
    he: CrtBfvServer,
    local_fn: Callable,
    worker_fn: Callable,
    jobs: Iterable,
) -> Iterator:
    """Results of `jobs` in order, each as soon as it is done (`HeExecutor.imap`): a
    job is made (its uploads received) while the ones before it run, and the caller
    sends each result before the next is done, so the client decrypts while the
    server computes. In this thread without workers; the workers' CPU seconds go to
    the meter under the current label."""
    if executor is None or executor.workers <= 1:
        for j in jobs:
            yield local_fn(he, j)
        return
    for r, cpu in executor.imap(worker_fn, jobs):
        ch.meter.record_worker_cpu(cpu)
        yield r


def he_matmul(
    ch: Channel,
    he: CrtBfvClient | CrtBfvServer,
    operand: NDArray,
    shape: tuple[int, int, int],
    rhs_bits: int,
    rng: SecureRng,
    executor: HeExecutor | None = None,
    wanted: NDArray[np.bool_] | None = None,
) -> Ring:
    """Shares of X·W mod 2^64: the client holds X (m×k, uint64), the server W (k×n).

    The server's W is signed int64 with |W| < 2^rhs_bits (63 for uniform ring values
    read as signed). Coefficient packing (`common.he.packing`); rounds: 2. Returns carry
    c0 at the useful coefficients only; with `wanted` (public, (m, n) bool) only at the
    entries the caller needs: the others' shares are meaningless (the client's are set
    to 0), and an output block with none is neither computed nor sent.
    Bytes per prime: Mb·Kb uploads of 8·N·(levels) and Mb·Nb returns of 9·N, plus 8 per
    needed entry.
    """
    return he_matmul_many(ch, he, [(operand, shape, rhs_bits, wanted)], rng, executor)[0]


def he_matmul_many(
    ch: Channel,
    he: CrtBfvClient | CrtBfvServer,
    items: list[tuple[NDArray, tuple[int, int, int], int, NDArray[np.bool_] | None]],
    rng: SecureRng,
    executor: HeExecutor | None = None,
) -> list[Ring]:
    """`he_matmul` for each (operand, shape, rhs_bits, wanted) of `items`, pipelined: the
    client sends every product's uploads before it reads the first returns, and the
    server streams the products' jobs through its workers as the uploads arrive and
    sends each product's returns when its jobs are done, so that the client encrypts
    and decrypts while the server computes (the messages are those of the calls one
    by one). Rounds: 2 in all, instead of 2 per product."""
    return he_matmul_many_deferred(ch, he, items, rng, executor)()


def he_matmul_many_deferred(
    ch: Channel,
    he: CrtBfvClient | CrtBfvServer,
    items: list[tuple[NDArray, tuple[int, int, int], int, NDArray[np.bool_] | None]],
    rng: SecureRng,
    executor: HeExecutor | None = None,
) -> Callable[[], list[Ring]]:
    """`he_matmul_many` as a `finish` to call (see `he_products_deferred`)."""
    if ch.party == CLIENT:
        assert isinstance(he, CrtBfvClient)
        client = he
        pending = [_matmul_send(ch, he, op, shape, bits, want) for op, shape, bits, want in items]
        return lambda: [_matmul_receive(ch, client, st) for st in pending]
    assert isinstance(he, CrtBfvServer)
    done = _matmul_serve_many(
        ch, he, [(op, shape, bits, want, None) for op, shape, bits, want in items], rng, executor
    )
    return lambda: done


def he_cross_matmul_many(
    ch: Channel,
    he: CrtBfvClient | CrtBfvServer,
    items: list[tuple[NDArray, NDArray, tuple[int, int, int], tuple[int, int] | None]],
    rng: SecureRng,
    executor: HeExecutor | None = None,
) -> list[Ring]:
    """Shares of X·W + X'·Y mod 2^64 for each (lhs, rhs, (m, k, n), diag) of `items`:
    the client's lhs X (m×k) and rhs Y (k×n), uint64, are encrypted; the server's lhs
    X' (m×k) and rhs W (k×n) are uniform ring values (int64 views). With `diag` =
    (dm, dn) only the diagonal dm×dn blocks are wanted (a stack of small products,
    `diagonal_blocks`): the client's share elsewhere is 0. A matrix triple's two cross
    terms in one product: both land on the same coefficients of the coefficient
    packing, so they return as one ciphertext per output block, half the returns (and
    half the sealing and decryptions) of two `he_matmul` calls, as many ct×pt products.
    Pipelined like `he_matmul_many`; rounds: 2 in all. Bytes per item and prime:
    Mb·Kb + Kb·Nb uploads (first level) and one return of 9·N per output block with a
    wanted entry (an empty blob for the others), plus 8 per wanted entry
    (`cross_matmul_layout`)."""

    return he_cross_matmul_many_deferred(ch, he, items, rng, executor)()


def he_cross_matmul_many_deferred(
    ch: Channel,
    he: CrtBfvClient | CrtBfvServer,
    items: list[tuple[NDArray, NDArray, tuple[int, int, int], tuple[int, int] | None]],
    rng: SecureRng,
    executor: HeExecutor | None = None,
) -> Callable[[], list[Ring]]:
    """`he_cross_matmul_many` as a `finish` to call (see `he_products_deferred`)."""

    def wanted(shape: tuple[int, int, int], diag: tuple[int, int] | None) -> NDArray | None:
        return None if diag is None else diagonal_blocks(shape[0], shape[2], diag)

    if ch.party == CLIENT:
        assert isinstance(he, CrtBfvClient)
        client = he
        pending = [
            _matmul_send(ch, he, x, shape, 63, wanted(shape, d), rhs=y) for x, y, shape, d in items
        ]
        return lambda: [_matmul_receive(ch, client, st) for st in pending]
    assert isinstance(he, CrtBfvServer)
    served = [(w, shape, 63, wanted(shape, d), x) for x, w, shape, d in items]
    done = _matmul_serve_many(ch, he, served, rng, executor)
    return lambda: done


@dataclass
class _Pending:
    """A client's matrix product whose uploads are sent and whose returns are due."""

    blk: Blocking
    P: int
    shape: tuple[int, int, int]
    wanted: NDArray[np.bool_] | None
    layout: MatmulLayout | None = None


class MatmulLayout(NamedTuple):
    """How `he_matmul` runs a product, from public values only (both parties compute it).

    primes: CRT primes; mask_bits: the server's integer mask; blocking: the coefficient
    packing; shared: W's coefficients are small signed integers whose NTT form is the
    same under every prime (a weight, not a ring share), so one weight NTT serves all
    primes; low: the client's uploads are made at the return level
    (`CrtBfvClient.encrypt_low`) and the products run there, which holds whenever the
    flood of their noise fits the return level (encoded weights below ≈ 2^38–2^43 at
    the default model's and BERT-base's shapes); merge: block columns per merged
    return (`common.he.galois_merge`, 1: none): with `shared` weights, a power-of-two
    kb and at least 2 block columns, groups of `merge` consecutive block columns
    (public) return as one ciphertext, merged at the first level (uploads there, not
    `low`) by merge − 1 automorphisms with the client's Galois keys."""

    primes: int
    mask_bits: int
    blocking: Blocking
    shared: bool
    low: bool
    merge: int = 1

    @property
    def merge_levels(self) -> int:
        return int(math.log2(self.merge))

    def groups(self) -> list[range]:
        """The merged groups of block columns (each `merge` long, the last shorter)."""
        nb = self.blocking.grid[2]
        return [range(c, min(c + self.merge, nb)) for c in range(0, nb, self.merge)]


def matmul_layout(params: CrtBfvParams, shape: tuple[int, int, int], rhs_bits: int) -> MatmulLayout:
    """The `MatmulLayout` of `he_matmul` for `shape` and |W| < 2^rhs_bits."""
    m, k, n = shape
    N = params.slots
    value_bits = 64 + rhs_bits + math.log2(max(k, 2))
    P = params.primes_for(value_bits)
    sigma = params.mask_bits(value_bits)
    down = compact_bytes(N, 0)
    shared = P > 1 and min(params.plain_primes[:P]) > 1 << (rhs_bits + 1)
    if shared and params.merge_max > 1:
        blk = choose_blocking(m, k, n, N, params.upload_bytes, down, merge=params.merge_max)
        kb, cols = blk.kb, blk.grid[2]
        if cols > 1 and not kb & (kb - 1):
            g = min(params.merge_max, kb, 1 << int(math.log2(cols)))
            if _fits_merged(params, blk.grid[1], plain_bound(params, rhs_bits), g):
                return MatmulLayout(P, sigma, blk, True, False, g)
    if shared:
        blk = choose_blocking(m, k, n, N, params.upload_bytes_low, down)
        if _fits_low(params, blk.grid[1], plain_bound(params, rhs_bits)):
            return MatmulLayout(P, sigma, blk, True, True)
    blk = choose_blocking(m, k, n, N, params.upload_bytes, down)
    return MatmulLayout(P, sigma, blk, shared, False)


def cross_matmul_layout(params: CrtBfvParams, shape: tuple[int, int, int]) -> MatmulLayout:
    """The `MatmulLayout` of `he_cross_matmul_many` for `shape`: two products of ring
    values summed (one more value bit), both operands of the client uploaded at the
    first level (the plaintexts are full-range), the block shape chosen for the Kb·Nb
    extra uploads (`choose_blocking(…, cross=True)`)."""
    m, k, n = shape
    N = params.slots
    value_bits = 64 + 63 + math.log2(max(k, 2)) + 1
    P = params.primes_for(value_bits)
    down = compact_bytes(N, 0)
    blk = choose_blocking(m, k, n, N, params.upload_bytes, down, cross=True)
    return MatmulLayout(P, params.mask_bits(value_bits), blk, False, False)


def cross_matmul_bytes(params: CrtBfvParams, blk: Blocking) -> int:
    """Bytes of one prime's uploads and returns of `he_cross_matmul_many` with the
    blocking `blk` (`cross_matmul_layout`), without the wanted entries' 8 bytes each
    (the same whatever the blocking)."""
    _, Kb, Nb = blk.grid
    ups = blk.uploads + Kb * Nb
    return ups * params.upload_bytes + blk.returns * compact_bytes(params.slots, 0)


def plain_bound(params: CrtBfvParams, rhs_bits: int) -> float:
    """The largest |coefficient| of a W block plaintext: SEAL lifts plaintext
    coefficients to (−p/2, p/2], and a W block has kb·nb ≤ N of them."""
    return min(2.0**rhs_bits, params.plain_primes[0] / 2)


def _fits_low(params: CrtBfvParams, terms: int, plain_max: float) -> bool:
    """Whether products of uploads made at the return level leave room for their flood."""
    try:
        params.flood_bits(terms, plain_max, low=True)
    except ValueError:
        return False
    return True


def _fits_merged(params: CrtBfvParams, terms: int, plain_max: float, group: int) -> bool:
    """Whether returns merged `group` at a time leave room for their flood."""
    try:
        params.flood_bits(terms, plain_max, merges=int(math.log2(group)))
    except ValueError:
        return False
    return True


def galois_elements_for(params: CrtBfvParams, layouts: list[MatmulLayout]) -> list[int]:
    """The Galois elements every merged layout of `layouts` needs (sorted; public)."""
    out: set[int] = set()
    for lay in layouts:
        if lay.merge > 1:
            out.update(galois_elements(params.poly_degree, lay.blocking.kb, lay.merge))
    return sorted(out)


def _check_wanted(wanted: NDArray[np.bool_] | None, shape: tuple[int, int, int]) -> None:
    if wanted is not None and wanted.shape != shape[::2]:
        raise ValueError(f"wanted has shape {wanted.shape}, the product {shape[::2]}")


def _matmul_send(
    ch: Channel,
    he: CrtBfvClient,
    operand: NDArray,
    shape: tuple[int, int, int],
    rhs_bits: int,
    wanted: NDArray[np.bool_] | None,
    rhs: NDArray | None = None,
) -> _Pending:
    """Encrypt and send the client's blocks: per prime one message of the Mb·Kb lhs
    blocks (row-major), then with `rhs` (`he_cross_matmul_many`) its Kb·Nb blocks in
    the rhs layout (row-major)."""
    _check_wanted(wanted, shape)
    if rhs is None:
        lay = matmul_layout(he.params, shape, rhs_bits)
    else:
        lay = cross_matmul_layout(he.params, shape)
    P, blk, low = lay.primes, lay.blocking, lay.low
    Mb, Kb, Nb = blk.grid
    enc = blk.encode_lhs(np.asarray(operand, dtype=U64))
    enc_rhs = None if rhs is None else blk.encode_rhs(np.asarray(rhs, dtype=U64))

    def encrypt(i: int, x: NDArray[np.uint64]) -> bytes:
        return he.encrypt_low(i, x) if low else he.encrypt(i, x, coeffs=True)

    for i in range(P):
        p = U64(he.primes[i].p)
        blobs = [encrypt(i, enc[a, b] % p) for a in range(Mb) for b in range(Kb)]
        if enc_rhs is not None:
            blobs += [encrypt(i, enc_rhs[b, c] % p) for b in range(Kb) for c in range(Nb)]
        ch.send("he.mm.up", pack_blobs(blobs), kind="ciphertexts", shape=(len(blobs),))
    return _Pending(blk, P, shape, wanted, lay)


def _receive_blocks(ch: Channel, he: CrtBfvClient, st: _Pending) -> list[NDArray[np.uint64]]:
    """Per prime, the (Mb·Nb, mb·nb) block outputs (`Blocking.output_index` order; 0
    where not wanted), one return per block."""
    blk, wanted = st.blk, st.wanted
    Mb, _, Nb = blk.grid
    picks = [blk.keep_index(a, c, wanted) for a in range(Mb) for c in range(Nb)]
    index = blk.output_index().ravel()
    keeps = [index[pk] for pk in picks]  # `Blocking.keep`
    res = []
    for i in range(st.P):
        want = batch_size([he.return_size(kp.size) if kp.size else 0 for kp in keeps])
        raws = unpack_blobs(ch.recv("he.mm.down", want), Mb * Nb)
        vals = np.zeros((Mb * Nb, blk.mb * blk.nb), dtype=U64)
        for t, (raw, keep) in enumerate(zip(raws, keeps, strict=True)):
            if keep.size:
                dec = he.decrypt(i, he.load_result(i, raw, keep), coeffs=True, keep=keep)
                vals[t, picks[t]] = dec[keep]
            elif raw:
                raise ValueError("a return for an output block with nothing wanted")
        res.append(vals)
    return res


def _receive_merged(ch: Channel, he: CrtBfvClient, st: _Pending) -> list[NDArray[np.uint64]]:
    """Per prime, the (Mb·Nb, mb·nb) block outputs (`Blocking.output_index` order)
    from merged returns: each group's return decrypted once, its columns' outputs
    taken from their merged positions and divided by the merge's powers of two."""
    blk, lay, wanted = st.blk, st.layout, st.wanted
    assert lay is not None
    Mb, _, Nb = blk.grid
    groups = [list(g) for g in lay.groups()]
    keeps = [group_keep(blk, a, g, wanted) for a in range(Mb) for g in groups]
    layouts = [group_layout(blk, len(g)) for g in groups]
    res = []
    for i in range(st.P):
        p = he.primes[i].p
        want = batch_size([he.return_size(kp.size) if kp.size else 0 for kp in keeps])
        raws = unpack_blobs(ch.recv("he.mm.down", want), len(keeps))
        vals = np.zeros((Mb * Nb, blk.mb * blk.nb), dtype=U64)
        for t, (raw, keep) in enumerate(zip(raws, keeps, strict=True)):
            if not keep.size:
                if raw:
                    raise ValueError("a return for an output block with nothing wanted")
                continue
            a, q = divmod(t, len(groups))
            dec = he.decrypt(i, he.load_result(i, raw, keep), coeffs=True, keep=keep)
            pos, scales = layouts[q]
            for j, c in enumerate(groups[q]):
                inv = pow(2, -int(scales[j]), p)
                vals[a * Nb + c] = mulmod_const(dec[pos[j]], inv, p)
        res.append(vals)
    return res


def _matmul_receive(ch: Channel, he: CrtBfvClient, st: _Pending) -> Ring:
    blk, wanted = st.blk, st.wanted
    merged = st.layout is not None and st.layout.merge > 1
    res = (_receive_merged if merged else _receive_blocks)(ch, he, st)
    Mb, _, Nb = blk.grid
    full = he.basis(st.P).to_ring(res).reshape(Mb, Nb, blk.mb * blk.nb)
    out = blk.decode_values(full)
    if wanted is not None:
        out[~wanted] = 0
    return out


@dataclass
class _Serving:
    """A server's matrix product whose uploads are in and whose jobs are made: what
    `_matmul_finish` needs to send its returns once the jobs are done."""

    blk: Blocking
    P: int
    merge: int
    groups: int  # returns per row block: merged groups (block columns unmerged)
    jobs: list[MatmulJob]
    limbs: list[Ring]  # the server's integer masks at the blocks' outputs


def _matmul_serve_many(
    ch: Channel,
    he: CrtBfvServer,
    items: list[tuple],
    rng: SecureRng,
    executor: HeExecutor | None,
) -> list[Ring]:
    """The server's side of `he_matmul_many` (W = the operand) or, with an lhs X', of
    `he_cross_matmul_many` (X·W + X'·Y from the client's uploads of X and Y), for each
    of `items` (`_matmul_prepare`'s arguments operand, shape, rhs_bits, wanted, lhs),
    streamed: the next product's uploads
    are taken and its jobs submitted while the last ones run, and each product's
    returns go out as soon as its jobs are done (`_stream`). The messages are those
    of the calls one by one."""
    prepared: list[_Serving] = []

    def jobs() -> Iterator[MatmulJob]:
        for op, shape, bits, want, lhs in items:
            st = _matmul_prepare(ch, he, op, shape, bits, rng, executor, want, lhs)
            prepared.append(st)
            yield from st.jobs

    out: list[Ring] = []
    got: list[list[list[bytes]]] = []

    def finish_ready() -> None:
        nonlocal got
        while len(out) < len(prepared) and len(got) == len(prepared[len(out)].jobs):
            out.append(_matmul_finish(ch, prepared[len(out)], got))
            got = []

    for r in _stream(ch, executor, he, run_matmul, matmul_in_worker, jobs()):
        got.append(r)
        finish_ready()
    finish_ready()
    if len(out) != len(items):
        raise RuntimeError("a product's jobs did not all come back")
    return out


def _matmul_prepare(
    ch: Channel,
    he: CrtBfvServer,
    operand: NDArray,
    shape: tuple[int, int, int],
    rhs_bits: int,
    rng: SecureRng,
    executor: HeExecutor | None,
    wanted: NDArray[np.bool_] | None,
    lhs: NDArray | None = None,
) -> _Serving:
    """Receive one product's uploads, draw its masks and cut it into jobs."""
    _check_wanted(wanted, shape)
    params = he.params
    cross = lhs is not None
    lay = cross_matmul_layout(params, shape) if cross else matmul_layout(params, shape, rhs_bits)
    P, sigma, blk, shared, low = lay.primes, lay.mask_bits, lay.blocking, lay.shared, lay.low
    Mb, Kb, Nb = blk.grid
    w = np.asarray(operand, dtype=np.int64)
    x = None if lhs is None else np.asarray(lhs, dtype=np.int64)
    if x is not None and x.shape != shape[:2]:
        raise ValueError(f"lhs has shape {x.shape}, expected {shape[:2]}")
    # With `shared`, one job runs all primes of its columns and transforms W once; with
    # `low`, its uploads and products are on the return level; with `merge`, groups of
    # block columns return as one ciphertext.
    merges = lay.merge_levels
    terms = 2 * Kb if cross else Kb  # ct×pt products summed into one output block
    flood = params.flood_bits(terms, plain_bound(params, rhs_bits), low=low, merges=merges)
    galois: list[bytes] = []
    if lay.merge > 1:
        galois = list(he.galois_blobs)
        if len(galois) < P:
            raise ValueError("merged returns need the client's Galois keys for every prime")
    # every wanted entry (all, without `wanted`) returns once per prime (`Blocking.keep`)
    m, _, n = shape
    he.expose(P * (m * n if wanted is None else int(wanted.sum())))
    # masks at the blocks' outputs only: no other coefficient's c0 travels (`keep`)
    limbs = _mask(rng, sigma, (Mb, Nb, blk.mb * blk.nb))
    basis = he.basis(P)
    mask_res = basis.residues_of_limbs(limbs)
    # The client sends every prime's uploads before it reads: take them all, then cut
    # the work by prime and block column.
    n_up = Mb * Kb + (Kb * Nb if cross else 0)
    bound = upload_bound(params, n_up)
    got = [unpack_blobs(ch.recv("he.mm.up", max_bytes=bound), n_up) for _ in range(P)]
    ups = [g[: Mb * Kb] for g in got]
    # the rhs uploads of each block column, (b, c) row-major on the wire
    rhs_ups = [[g[Mb * Kb + c :: Nb] for c in range(Nb)] for g in got] if cross else []
    workers = 1 if executor is None else executor.workers
    # Every job loads and transforms all its primes' uploads, so a job per worker: with
    # `shared` one job holds every prime of its block columns (2 per worker loaded each
    # upload twice as often: 16% more linear-mask CPU for the demo, and no better
    # balance); otherwise the primes themselves are the jobs.
    groups = workers if shared else math.ceil(2 * workers / P)
    merged = lay.groups() if lay.merge > 1 else [range(c, c + 1) for c in range(Nb)]
    parts = _split(len(merged), 1 if workers <= 1 else min(len(merged), groups))
    col_groups = [np.array([c for q in part for c in merged[q]], dtype=np.int64) for part in parts]
    prime_sets = [tuple(range(P))] if shared else [(i,) for i in range(P)]
    jobs = [
        MatmulJob(
            params,
            he.public_key_blobs,
            primes,
            [ups[i] for i in primes],
            w,
            blk,
            tuple(int(c) for c in g),
            np.stack([mask_res[i][:, g] for i in primes]),
            flood,
            wanted,
            shared,
            low,
            lay.merge,
            tuple(galois[i] for i in primes) if galois else (),
            x,
            [[rhs_ups[i][c] for c in g] for i in primes] if cross else [],
        )
        for primes in prime_sets
        for g in col_groups
    ]
    return _Serving(blk, P, lay.merge, len(merged), jobs, limbs)


def _matmul_finish(ch: Channel, st: _Serving, results: Iterable[list[list[bytes]]]) -> Ring:
    """Send a product's returns (one message per prime, every output block's in
    order) from its jobs' results; the server's share of the product."""
    blk, P, merge = st.blk, st.P, st.merge
    Mb = blk.grid[0]
    raws = [[b""] * (Mb * st.groups) for _ in range(P)]
    for job, per_prime in zip(st.jobs, results, strict=True):
        # the job's results in order: per row block, its groups (single columns unmerged)
        qs = sorted({c // merge for c in job.cols})
        for i, part in zip(job.primes, per_prime, strict=True):
            for a in range(Mb):
                for qi, q in enumerate(qs):
                    raws[i][a * st.groups + q] = part[a * len(qs) + qi]
    for i in range(P):
        ch.send("he.mm.down", pack_blobs(raws[i]), kind="ciphertexts", shape=(len(raws[i]),))
    return blk.decode_values(-st.limbs[0])
