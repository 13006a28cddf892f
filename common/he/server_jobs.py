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
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from common.he.crt import mulmod_const
from common.he.crt_bfv import CrtBfvParams, CrtBfvServer
from common.he.galois_merge import Merger, group_keep, group_layout, shift_rhs
from common.he.packing import Blocking
from common.prg import SecureRng

U64 = np.uint64


@dataclass(frozen=True)
class MatmulJob:
    """Block columns `cols` of X·W under the plaintext primes `primes` (coefficient
    packing). With `shared`, W's coefficients are small signed integers whose NTT form
    is the same under every prime: each W block is encoded and transformed once, under
    the first prime, and every prime's product runs in that prime's context."""

    params: CrtBfvParams
    public_keys: tuple[bytes, ...]
    primes: tuple[int, ...]
    blobs: list[list[bytes]]  # per prime: the Mb·Kb uploaded ciphertexts, row-major
    w: NDArray[np.int64]  # the server's k×n operand
    blk: Blocking
    cols: tuple[int, ...]
    # (len(primes), Mb, len(cols), mb·nb) mask residues at the blocks' outputs
    # (`Blocking.output_index` order): the other coefficients' c0 never travels
    mask_res: NDArray[np.uint64]
    flood: int
    wanted: NDArray[np.bool_] | None = None  # (m, n): the entries the client needs
    shared: bool = False
    low: bool = False  # uploads and products at the return level (`CrtBfvClient.encrypt_low`)
    merge: int = 1  # block columns per merged return (`common.he.galois_merge`); cols: whole groups
    galois: tuple[bytes, ...] = ()  # per prime of `primes`: the client's Galois keys (public)
    # Cross products (`he_cross_matmul_many`): the server's m×k lhs X', and per prime, per
    # column of `cols`, the Kb uploaded blocks of the client's rhs Y; outputs X·W + X'·Y.
    lhs: NDArray[np.int64] | None = None
    rhs_blobs: list[list[list[bytes]]] = field(default_factory=list)


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


def run_matmul_merged(he: CrtBfvServer, job: MatmulJob) -> list[list[bytes]]:
    """`run_matmul` with merged returns: per prime, the sealed result of (row block a,
    the job's g-th group of `merge` block columns) at index a·groups + g.
    The products run at the first level with W encoded times X^−(kb−1), so that their
    outputs lie on the multiples of kb; each group is merged there (`Merger`, ≤ merge − 1
    key switches), then sealed once (`seal_result`: switch, re-randomise, flood).
    An all-zero W block column contributes an encryption of zero (`zero_first`)."""
    blk = job.blk
    Mb, Kb, _ = blk.grid
    N = blk.degree
    host = job.primes[0] if job.shared else None
    groups = [list(g) for _, g in itertools.groupby(job.cols, key=lambda c: c // job.merge)]
    index = {c: ci for ci, c in enumerate(job.cols)}
    cts = [
        [[he.to_ntt(i if host is None else host, he.load(i, blobs[a * Kb + b], host))
          for b in range(Kb)] for a in range(Mb)]
        for i, blobs in zip(job.primes, job.blobs, strict=True)
    ]  # fmt: skip
    mergers = []
    for t, i in enumerate(job.primes):
        h = i if host is None else host
        keys = he.galois_keys_for(i, job.galois[t], host)
        mergers.append(Merger(he.primes[h].context, he.primes[h].evaluator, keys, N))
    out: list[list[bytes]] = [[b""] * (Mb * len(groups)) for _ in job.primes]
    for g, cols in enumerate(groups):
        pos, scales = group_layout(blk, len(cols))
        keeps = [group_keep(blk, a, cols, job.wanted) for a in range(Mb)]
        accs = [[[] for _ in range(Mb)] for _ in job.primes]
        for c in cols:
            enc = shift_rhs(blk.encode_rhs(job.w, col=c), blk.kb)
            pts = None
            for t, i in enumerate(job.primes):
                j = i if host is None else host
                if pts is None or not job.shared:
                    w_res = np.mod(enc, np.int64(he.primes[j].p)).astype(U64)
                    pts = [he.to_ntt(j, he.plain(j, w_res[b], coeffs=True), plain=True)
                           for b in range(Kb)]  # fmt: skip
                zero = all(pt.is_zero() for pt in pts)
                for a in range(Mb):
                    acc = he.zero_first(i, j) if zero else he.dot(j, cts[t][a], pts)
                    he.primes[j].evaluator.transform_from_ntt_inplace(acc)
                    accs[t][a].append(acc)
        for t, i in enumerate(job.primes):
            p = he.primes[i].p
            for a in range(Mb):
                keep = keeps[a]
                if not keep.size:
                    continue
                merged = mergers[t].merge(accs[t][a], blk.kb)
                mask = np.zeros(N, dtype=U64)
                for jj, c in enumerate(cols):
                    m = job.mask_res[t, a, index[c]]
                    mask[pos[jj]] = mulmod_const(m, pow(2, int(scales[jj]), p), p)
                out[t][a * len(groups) + g] = he.seal_result(
                    i, merged, mask[keep], coeffs=True, flood_bits=job.flood, keep=keep,
                    host=None if host is None or host == i else host,
                )  # fmt: skip
    return out


def run_matmul(he: CrtBfvServer, job: MatmulJob) -> list[list[bytes]]:
    """Per prime of the job, the sealed results for (row block a, column job.cols[c])
    at index a·len(cols) + c, c0 at the block's wanted coefficients only
    (`Blocking.keep`); b"" for a block with none.
    Cost per prime: Mb·Kb ciphertext NTTs and Mb·Kb ct×pt per column, plus Kb
    plaintext NTTs per column (once for all primes with `shared`); with `low` all of
    them on the return level's 3 moduli, where the client made the uploads. With
    `lhs` (cross products) also Kb ciphertext NTTs and Mb·Kb ct×pt per column and
    Mb·Kb plaintext NTTs of X' per job."""
    if job.merge > 1:
        return run_matmul_merged(he, job)
    blk = job.blk
    Mb, Kb, _ = blk.grid
    host = job.primes[0] if job.shared else None
    low = job.low

    def upload(i: int, blob: bytes) -> object:
        return he.to_ntt(i if host is None else host, he.load(i, blob, host, low=low))

    cts = [
        [[upload(i, blobs[a * Kb + b]) for b in range(Kb)] for a in range(Mb)]
        for i, blobs in zip(job.primes, job.blobs, strict=True)
    ]
    if job.lhs is not None:
        if job.shared or low:
            raise ValueError("cross products run on ring values at the first level")
        rhs_cts = [
            [[upload(i, blob) for blob in col] for col in per_col]
            for i, per_col in zip(job.primes, job.rhs_blobs, strict=True)
        ]
        enc_x = blk.encode_lhs(job.lhs)
        x_pts = []
        for i in job.primes:
            x_res = np.mod(enc_x, np.int64(he.primes[i].p)).astype(U64)
            x_pts.append(
                [[he.to_ntt(i, he.plain(i, x_res[a, b], coeffs=True), plain=True)
                  for b in range(Kb)] for a in range(Mb)]
            )  # fmt: skip
    out: list[list[bytes]] = [[b""] * (Mb * len(job.cols)) for _ in job.primes]
    picks = [[blk.keep_index(a, c, job.wanted) for c in job.cols] for a in range(Mb)]
    index = blk.output_index().ravel()
    keeps = [[index[pk] for pk in row] for row in picks]  # `Blocking.keep`
    for ci, c in enumerate(job.cols):
        # One block column of W at a time: Kb plaintexts in memory, not Kb·Nb.
        enc = blk.encode_rhs(job.w, col=c)
        pts_host = None
        for t, i in enumerate(job.primes):
            if pts_host is None or not job.shared:
                j = host if job.shared else i
                w_res = np.mod(enc, np.int64(he.primes[j].p)).astype(U64)
                pts_host = [
                    he.to_ntt(j, he.plain(j, w_res[b], coeffs=True), plain=True, low=low)
                    for b in range(Kb)
                ]
            # An all-zero W block column (padding) gives Enc(0), which must be under
            # prime i's own key: it is made in prime i's context.
            at = None if all(pt.is_zero() for pt in pts_host) else host
            for a in range(Mb):
                keep = keeps[a][ci]
                if not keep.size:
                    continue
                if job.lhs is not None:  # X·W + X'·Y: the rhs uploads times X' blocks
                    acc = he.dot(i, cts[t][a] + rhs_cts[t][ci], pts_host + x_pts[t][a])
                elif at is None and host is not None:
                    acc = he.dot(i, [], [])
                else:
                    acc = he.dot(i if at is None else at, cts[t][a], pts_host)
                out[t][a * len(job.cols) + ci] = he.seal_result(
                    i, acc, job.mask_res[t, a, ci][picks[a][ci]], coeffs=True,
                    flood_bits=job.flood, keep=keep, host=at,
                )  # fmt: skip
    return out


@dataclass(frozen=True)
class TrackProductsJob:
    """SIMD chunks of the mask-group outputs Σ_t Enc(U_t) ⊙ Y_{p,t} under every prime
    (`common.mpc.tracks`): each chunk's uploads are loaded once and serve all its
    outputs."""

    params: CrtBfvParams
    public_keys: tuple[bytes, ...]
    primes: int
    blobs: list[list[bytes]]  # per chunk: P·T_c ciphertexts (prime-major)
    terms: list[list[list[tuple[int, NDArray[np.uint64]]]]]  # per chunk, output: (upload, Y)
    mask_res: NDArray[np.uint64]  # (P, outputs of the job's chunks in order, N)
    flood: int


def run_track_products(he: CrtBfvServer, job: TrackProductsJob) -> list[list[list[bytes]]]:
    """Per chunk, per output, the P sealed results (one per prime).
    Cost per chunk and prime: T_c ciphertext loads and NTTs; per output and term one
    plaintext NTT and one ct×pt; per output one `seal_result`."""
    P = job.primes
    out: list[list[list[bytes]]] = []
    k = 0
    for blobs, chunk_terms in zip(job.blobs, job.terms, strict=True):
        tc = len(blobs) // P
        cts = [[he.to_ntt(i, he.load(i, blobs[i * tc + t])) for t in range(tc)] for i in range(P)]
        per_out = []
        for terms in chunk_terms:
            raws = []
            for i in range(P):
                p = U64(he.primes[i].p)
                pts = [he.to_ntt(i, he.plain(i, y % p, coeffs=False), plain=True) for _, y in terms]
                acc = he.dot(i, [cts[i][t] for t, _ in terms], pts)
                raws.append(
                    he.seal_result(i, acc, job.mask_res[i, k], coeffs=False, flood_bits=job.flood)
                )
            per_out.append(raws)
            k += 1
        out.append(per_out)
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


def matmul_in_worker(job: MatmulJob) -> tuple[list[list[bytes]], float]:
    """`run_matmul` in a worker; also returns the CPU seconds the job took there."""
    t = time.thread_time()
    return run_matmul(_worker_server(job.params, job.public_keys), job), time.thread_time() - t


def products_in_worker(job: ProductsJob) -> tuple[list[list[bytes]], float]:
    """`run_products` in a worker; also returns the CPU seconds the job took there."""
    t = time.thread_time()
    out = run_products(_worker_server(job.params, job.public_keys), job)
    return out, time.thread_time() - t


def track_products_in_worker(job: TrackProductsJob) -> tuple[list[list[list[bytes]]], float]:
    """`run_track_products` in a worker; also returns the CPU seconds it took there."""
    t = time.thread_time()
    out = run_track_products(_worker_server(job.params, job.public_keys), job)
    return out, time.thread_time() - t
