"""Two-party HE protocols that turn products of the parties' private values into shares.

Both return additive shares over Z_{2^64} of an exact integer product, computed under
several BFV plaintext primes (CRT). The client encrypts, the server multiplies by its
plaintexts, adds an integer mask r < 2^σ (σ = value bits + 40) and seals the result
(`CrtBfvServer.seal_result`); the client decrypts and reconstructs v + r, and the
server keeps −r mod 2^64.

Rounds: 2 (client → server → client), whatever the batch size.
"""

from __future__ import annotations

import math
import struct

import numpy as np
from numpy.typing import NDArray

from common.he.crt_bfv import CrtBfvClient, CrtBfvServer
from common.he.executor import HeExecutor
from common.he.packing import choose_blocking
from common.he.server_jobs import (
    MatmulJob,
    ProductsJob,
    matmul_in_worker,
    products_in_worker,
    run_matmul,
    run_products,
)
from common.mpc.ring import U64, Ring, random_ring
from common.mpc.roles import CLIENT
from common.prg import SecureRng
from common.transport import Channel


def pack_blobs(blobs: list[bytes]) -> bytes:
    """Length-prefixed concatenation (uint32 count, then uint32 length + bytes each)."""
    parts = [struct.pack("<I", len(blobs))]
    for b in blobs:
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


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
) -> Ring:
    """Shares of Σ_j x_j ⊙ y_j mod 2^64 (client holds the x_j, server the y_j).

    Each party passes its own list of equal-length uint64 vectors (same count J).
    Cost per N = 8192 values and prime: J seeded ciphertexts up (~24 B/value at
    [60,60,60]) and one down (~32 B/value); rounds: 2.
    """
    params = he.params
    N = params.slots
    J = len(operands)
    n = operands[0].size
    value_bits = 128 + math.log2(J)
    P = params.primes_for(value_bits)
    sigma = math.ceil(value_bits) + params.stat_sec
    chunks = math.ceil(n / N)

    def chunk(v: Ring, c: int) -> Ring:
        out = np.zeros(N, dtype=U64)
        part = v[c * N : (c + 1) * N]
        out[: part.size] = part
        return out

    if ch.party == CLIENT:
        assert isinstance(he, CrtBfvClient)
        for c in range(chunks):
            blobs = [
                he.encrypt(i, chunk(x, c) % U64(he.primes[i].p)) for i in range(P) for x in operands
            ]
            ch.send("he.prod.up", pack_blobs(blobs), kind="ciphertexts", shape=(len(blobs),))
        basis = he.basis(P)
        out = np.empty(chunks * N, dtype=U64)
        for c in range(chunks):
            raws = unpack_blobs(ch.recv("he.prod.down"), P)
            res = [he.decrypt(i, he.load_result(i, raws[i])) for i in range(P)]
            out[c * N : (c + 1) * N] = basis.to_ring(res)
        return out[:n]

    assert isinstance(he, CrtBfvServer)
    flood = params.flood_bits(J, he.primes[0].p / math.sqrt(12))
    basis = he.basis(P)
    # The client sends every chunk before it reads: take them all, then work in parallel.
    ups = [unpack_blobs(ch.recv("he.prod.up"), P * J) for _ in range(chunks)]
    limbs = _mask(rng, sigma, (chunks, N))
    mask_res = np.stack(basis.residues_of_limbs(limbs))  # (P, chunks, N)
    ys = np.stack([np.stack([chunk(y, c) for y in operands]) for c in range(chunks)])
    groups = _split(chunks, _parts(executor, chunks))
    jobs = [
        ProductsJob(
            params, he.public_key_blobs, P, [ups[c] for c in g], ys[g], mask_res[:, g], flood
        )
        for g in groups
    ]
    results = _run(ch, executor, he, run_products, products_in_worker, jobs)
    for per_chunk in results:
        for raws in per_chunk:
            ch.send("he.prod.down", pack_blobs(raws), kind="ciphertexts", shape=(len(raws),))
    return (-limbs[0]).reshape(-1)[:n]


def _parts(executor: HeExecutor | None, units: int) -> int:
    """How many jobs to cut `units` into: two per worker (balance), one when serial."""
    workers = 1 if executor is None else executor.workers
    return 1 if workers <= 1 else max(1, min(units, 2 * workers))


def _split(units: int, parts: int) -> list[NDArray[np.int64]]:
    return [g for g in np.array_split(np.arange(units), parts) if g.size]


def _run(ch, executor, he, local_fn, worker_fn, jobs):
    """Jobs in this thread with the session's own HE objects, or in the workers (whose
    CPU seconds the meter records under the current label)."""
    if executor is None or executor.workers <= 1 or len(jobs) <= 1:
        return [local_fn(he, j) for j in jobs]
    out = executor.map(worker_fn, jobs)
    ch.meter.record_worker_cpu(sum(cpu for _, cpu in out))
    return [r for r, _ in out]


def he_matmul(
    ch: Channel,
    he: CrtBfvClient | CrtBfvServer,
    operand: NDArray,
    shape: tuple[int, int, int],
    rhs_bits: int,
    rng: SecureRng,
    executor: HeExecutor | None = None,
) -> Ring:
    """Shares of X·W mod 2^64: the client holds X (m×k, uint64), the server W (k×n).

    The server's W is signed int64 with |W| < 2^rhs_bits (63 for uniform ring values
    read as signed). Coefficient packing (`common.he.packing`); rounds: 2.
    """
    m, k, n = shape
    params = he.params
    N = params.slots
    value_bits = 64 + rhs_bits + math.log2(max(k, 2))
    P = params.primes_for(value_bits)
    sigma = math.ceil(value_bits) + params.stat_sec
    up_b = N * (len(params.coeff_bits) - 1) * 8
    blk = choose_blocking(m, k, n, N, up_b, he.return_size())
    Mb, Kb, Nb = blk.grid
    if ch.party == CLIENT:
        assert isinstance(he, CrtBfvClient)
        enc = blk.encode_lhs(np.asarray(operand, dtype=U64))
        for i in range(P):
            p = U64(he.primes[i].p)
            blobs = [
                he.encrypt(i, enc[a, b] % p, coeffs=True) for a in range(Mb) for b in range(Kb)
            ]
            ch.send("he.mm.up", pack_blobs(blobs), kind="ciphertexts", shape=(len(blobs),))
        res = []
        for i in range(P):
            raws = unpack_blobs(ch.recv("he.mm.down"), Mb * Nb)
            res.append(np.stack([he.decrypt(i, he.load_result(i, r), coeffs=True) for r in raws]))
        full = he.basis(P).to_ring(res).reshape(Mb, Nb, N)
        return blk.decode_output(full)

    assert isinstance(he, CrtBfvServer)
    w = np.asarray(operand, dtype=np.int64)
    # SEAL lifts plaintext coefficients to (−p/2, p/2]; a W block has kb·nb ≤ N of them.
    plain_std = min(2.0**rhs_bits, he.primes[0].p / 2)
    flood = params.flood_bits(Kb, plain_std)
    limbs = _mask(rng, sigma, (Mb, Nb, N))
    basis = he.basis(P)
    mask_res = basis.residues_of_limbs(limbs)
    # The client sends every prime's uploads before it reads: take them all, then cut
    # the work by prime and block column.
    ups = [unpack_blobs(ch.recv("he.mm.up"), Mb * Kb) for _ in range(P)]
    workers = 1 if executor is None else executor.workers
    col_groups = _split(Nb, 1 if workers <= 1 else min(Nb, math.ceil(2 * workers / P)))
    jobs = [
        MatmulJob(
            params,
            he.public_key_blobs,
            i,
            ups[i],
            w,
            blk,
            tuple(int(c) for c in g),
            mask_res[i][:, g],
            flood,
        )
        for i in range(P)
        for g in col_groups
    ]
    results = iter(_run(ch, executor, he, run_matmul, matmul_in_worker, jobs))
    for _i in range(P):
        raws: list[bytes] = [b""] * (Mb * Nb)
        for g in col_groups:
            part = next(results)
            for a in range(Mb):
                for ci, c in enumerate(g):
                    raws[a * Nb + int(c)] = part[a * len(g) + ci]
        ch.send("he.mm.down", pack_blobs(raws), kind="ciphertexts", shape=(len(raws),))
    return blk.decode_output(-limbs[0])
