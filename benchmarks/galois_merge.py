"""What merging sparse returns with Galois keys would cost and save (issue 13).

Measures, at the default HE parameters and one plaintext prime, on real
coefficient-packed products (X: rows×k uploaded at the return level, W: k×n small
weights, the blocking `he_matmul` chooses):
  * today's path per return: `seal_result` (re-randomise, flood, round) and the
    client's `load_result` + `decrypt`, and the bytes of a sparse return;
  * the merge (`common.he.galois_merge`): seconds per key switch, the noise after it
    against `merge_noise_bits`, the Galois keys' bytes, and that the merged ciphertext
    decrypts to every product exactly.
Usage: python -m benchmarks.galois_merge [--rows 16 --k 384 --n 384 --group 8]
       [--level first|return] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from common.he.crt_bfv import CrtBfvClient, CrtBfvParams, CrtBfvServer
from common.he.galois_merge import (
    Merger,
    galois_elements,
    merge_layout,
    merge_noise_bits,
)
from common.he.packing import choose_blocking
from common.prg import SecureRng

U64 = np.uint64


def measure(rows: int, k: int, n: int, group: int, level: str = "first") -> dict:
    """One product's column blocks under prime 0, merged in groups of `group`; `level`:
    'first' (uploads, products and merge at the first level, then the switch to the
    return level) or 'return' (all at the return level)."""
    low = level == "return"
    params = CrtBfvParams()
    N = params.poly_degree
    rng = SecureRng()
    client = CrtBfvClient(params)
    server = CrtBfvServer(params, client.public_keys(), rng)
    pr = server.primes[0]
    p = pr.p
    blk = choose_blocking(rows, k, n, N, params.upload_bytes_low, server.return_size(0))
    _, Kb, Nb = blk.grid
    if blk.kb & (blk.kb - 1):
        raise SystemExit(f"blocking kb = {blk.kb} is not a power of two")
    group = min(group, blk.kb, 1 << int(math.log2(Nb)))
    x = rng.below(p, rows * k).astype(U64).reshape(rows, k)
    w = (rng.below(1 << 16, k * n).astype(np.int64) - (1 << 15)).reshape(k, n)
    enc = blk.encode_lhs(x)

    def upload(v: np.ndarray) -> object:
        if low:
            return server.to_ntt(0, server.load(0, client.encrypt_low(0, v), low=True))
        return server.to_ntt(0, server.load(0, client.encrypt(0, v, coeffs=True)))

    ups = [upload(enc[0, b] % U64(p)) for b in range(Kb)]

    def product(c: int) -> object:
        wc = np.mod(blk.encode_rhs(w, col=c), np.int64(p)).astype(U64)
        pts = [
            server.to_ntt(0, server.plain(0, wc[b], True), plain=True, low=low) for b in range(Kb)
        ]
        return server.dot(0, ups, pts)

    cols = list(range(group))
    accs = [product(c) for c in cols]
    keep = blk.keep(0, 0)
    flood = params.flood_bits(Kb, 2.0**15, low=low)
    spare = [product(c) for c in cols]
    t = time.perf_counter()
    zero = np.zeros(keep.size, U64)
    raws = [server.seal_result(0, a, zero, True, flood, keep=keep) for a in spare]
    seal_s = (time.perf_counter() - t) / group
    t = time.perf_counter()
    for raw in raws:
        client.decrypt(0, client.load_result(0, raw, keep), coeffs=True)
    client_s = (time.perf_counter() - t) / group

    elements = galois_elements(N, blk.kb, group)
    t = time.perf_counter()
    key_blob = client.galois_keys(0, elements)
    keygen_s = time.perf_counter() - t
    merger = Merger(pr.context, pr.evaluator, server.load_galois_keys(0, key_blob), N)
    shift = server.plain(0, _monomial(N, N - (blk.kb - 1), p), True)  # X^−(kb−1) = −X^(N−kb+1)
    cts = []
    for acc in accs:
        pr.evaluator.transform_from_ntt_inplace(acc)
        pr.evaluator.multiply_plain_inplace(acc, shift)
        cts.append(acc)
    budget_in = min(client.noise_budget(0, c) for c in cts)
    t = time.perf_counter()
    merged = merger.merge(cts, blk.kb)
    if not low:
        pr.evaluator.mod_switch_to_inplace(merged, pr.return_parms)
    merge_s = time.perf_counter() - t
    budget_out = client.noise_budget(0, merged)
    got = client.decrypt(0, merged, coeffs=True)
    offsets, scales = merge_layout([True] * group, N, blk.kb)
    want = [(x.astype(object) @ w[:, c * blk.nb : (c + 1) * blk.nb].astype(object)) for c in cols]
    exact = True
    for j in range(len(cols)):
        pos = blk.output_index() - (blk.kb - 1) + offsets[j]
        vals = got[pos].astype(object) * pow(2, -int(scales[j]), p) % p
        exact &= bool(np.array_equal(vals, np.mod(want[j], p)))
    merges = int(scales.max())
    if low:
        digits, special = list(params.coeff_bits[:-2]), params.coeff_bits[-1]
        noise = params.noise_bits(Kb, 2.0**15, low=True)
        bound = merge_noise_bits(noise, merges, digits, special, N)
    else:
        bound = params.noise_bits(Kb, 2.0**15, merges=merges)
    merged_flood = math.ceil(bound) + params.stat_sec + 2 + math.ceil(params.session_bits / 2) + 1
    return {
        "shape": [rows, k, n],
        "blocking": {"mb": blk.mb, "kb": blk.kb, "nb": blk.nb, "grid": list(blk.grid)},
        "group": group,
        "level": level,
        "today_per_return": {
            "seal_result_ms": round(seal_s * 1e3, 2),
            "client_load_decrypt_ms": round(client_s * 1e3, 2),
            "bytes": server.return_size(keep.size),
        },
        "merge": {
            "key_switches": group - 1,
            "ms_per_key_switch": round(merge_s / max(1, group - 1) * 1e3, 2),
            "galois_elements": elements,
            "galois_key_bytes_per_prime": len(key_blob),
            "keygen_s": round(keygen_s, 2),
            "noise_budget_in": budget_in,
            "noise_budget_out": budget_out,
            "server_noise_bound_bits": round(bound, 1),
            "flood_bits": merged_flood,
            "flood_fits": merged_flood + 1 + params.plain_bits + 2 <= params.return_bits,
            "merged_return_bytes": server.return_size(group * keep.size),
            "exact": exact,
        },
    }


def _monomial(n: int, e: int, p: int) -> np.ndarray:
    c = np.zeros(n, dtype=U64)
    c[e] = p - 1
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--k", type=int, default=384)
    ap.add_argument("--n", type=int, default=384)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--level", choices=["first", "return"], default="first")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = measure(a.rows, a.k, a.n, a.group, a.level)
    print(json.dumps(out, indent=None if a.json else 2))


if __name__ == "__main__":
    main()
