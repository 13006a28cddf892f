"""The server's HE work cut into picklable jobs (run here or in worker processes).

A job carries what one slice of a product needs: the client's ciphertexts for one
plaintext prime (or for a few SIMD chunks), the server's plaintext operands, the CRT
residues of the server's integer masks (drawn by the session, not by the worker), and
the flooding width. It returns the sealed result ciphertexts (`CrtBfvServer.seal_result`:
re-randomised, flooded, rounded). In a worker the `CrtBfvServer` is rebuilt from the
public parameters and public keys once per key set and cached; its flooding noise comes
from the worker's own `SecureRng`.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from common.he.crt_bfv import CrtBfvParams, CrtBfvServer
from common.he.packing import Blocking
from common.prg import SecureRng

U64 = np.uint64


@dataclass(frozen=True)
class MatmulJob:
    """Block columns `cols` of X·W under plaintext prime `prime` (coefficient packing)."""

    params: CrtBfvParams
    public_keys: tuple[bytes, ...]
    prime: int
    blobs: list[bytes]  # the Mb·Kb uploaded ciphertexts of this prime, row-major
    w: NDArray[np.int64]  # the server's k×n operand
    blk: Blocking
    cols: tuple[int, ...]
    mask_res: NDArray[np.uint64]  # (Mb, len(cols), N) mask residues mod this prime
    flood: int


@dataclass(frozen=True)
class ProductsJob:
    """SIMD chunks of Σ_j x_j ⊙ y_j under every prime."""

    params: CrtBfvParams
    public_keys: tuple[bytes, ...]
    primes: int
    blobs: list[list[bytes]]  # per chunk: P·J ciphertexts (prime-major)
    ys: NDArray[np.uint64]  # (chunks, J, N) the server's operands
    mask_res: NDArray[np.uint64]  # (P, chunks, N)
    flood: int


def run_matmul(he: CrtBfvServer, job: MatmulJob) -> list[bytes]:
    """Sealed results for (row block a, column job.cols[c]) at index a·len(cols) + c.
    Cost: Mb·Kb ciphertext NTTs, Kb plaintext NTTs and Mb·Kb ct×pt per column."""
    i, blk = job.prime, job.blk
    Mb, Kb, _ = blk.grid
    p = he.primes[i].p
    cts = [[he.to_ntt(i, he.load(i, job.blobs[a * Kb + b])) for b in range(Kb)] for a in range(Mb)]
    out: list[bytes] = [b""] * (Mb * len(job.cols))
    for ci, c in enumerate(job.cols):
        # One block column of W at a time: Kb plaintexts in memory, not Kb·Nb.
        w_res = np.mod(blk.encode_rhs(job.w, col=c), np.int64(p)).astype(U64)
        pts = [he.to_ntt(i, he.plain(i, w_res[b], coeffs=True), plain=True) for b in range(Kb)]
        for a in range(Mb):
            acc = he.dot(i, cts[a], pts)
            out[a * len(job.cols) + ci] = he.seal_result(
                i, acc, job.mask_res[a, ci], coeffs=True, flood_bits=job.flood
            )
    return out


def run_products(he: CrtBfvServer, job: ProductsJob) -> list[list[bytes]]:
    """Per chunk, the P sealed results (one per prime)."""
    P, J = job.primes, job.ys.shape[1]
    out = []
    for c, blobs in enumerate(job.blobs):
        raws = []
        for i in range(P):
            p = U64(he.primes[i].p)
            cts = [he.load(i, blobs[i * J + j]) for j in range(J)]
            pts = [he.plain(i, job.ys[c, j] % p, coeffs=False) for j in range(J)]
            acc = he.dot_plain(i, cts, pts)
            raws.append(
                he.seal_result(i, acc, job.mask_res[i, c], coeffs=False, flood_bits=job.flood)
            )
        out.append(raws)
    return out


_SERVERS: OrderedDict[bytes, CrtBfvServer] = OrderedDict()
_CACHE = 4  # sessions whose HE objects a worker keeps


def _worker_server(params: CrtBfvParams, public_keys: tuple[bytes, ...]) -> CrtBfvServer:
    key = hashlib.sha256(repr(params).encode() + b"".join(public_keys)).digest()
    he = _SERVERS.get(key)
    if he is None:
        he = CrtBfvServer(params, list(public_keys), SecureRng())
        _SERVERS[key] = he
        while len(_SERVERS) > _CACHE:
            _SERVERS.popitem(last=False)
    _SERVERS.move_to_end(key)
    return he


def matmul_in_worker(job: MatmulJob) -> tuple[list[bytes], float]:
    """`run_matmul` in a worker; also returns the CPU seconds the job took there."""
    t = time.thread_time()
    return run_matmul(_worker_server(job.params, job.public_keys), job), time.thread_time() - t


def products_in_worker(job: ProductsJob) -> tuple[list[list[bytes]], float]:
    """`run_products` in a worker; also returns the CPU seconds the job took there."""
    t = time.thread_time()
    out = run_products(_worker_server(job.params, job.public_keys), job)
    return out, time.thread_time() - t
