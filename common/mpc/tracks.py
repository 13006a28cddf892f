"""Slot layout of the mask-group products: each mask uploaded once ("tracks").

A group's planned products (i, j) need shares of A_i·A_j, whose cross terms the HE
protocol computes slot by slot: the client uploads its share of every mask, the server
multiplies by its own shares. Uploading the operands pair by pair would send a mask
once per product it enters. Here every mask goes up once per shape it is used at:

- A *region* is one group's products of one shape S (a mask smaller than S, i.e.
  broadcast, is used at S as it is broadcast). Regions lie one after another along
  the SIMD slot axis, `size` = |S| slots each.
- A region's masks are its *tracks* 0, 1, …: upload vector t holds, at each region's
  slots, the client's share of that region's track t. Its products are *outputs*
  0, 1, …: output vector p holds, at each region's slots, that region's product p.
- The server computes output p as Σ_t Enc(U_t) ⊙ Y_{p,t} slot-wise, where Y_{p,t} is
  its share of the partner mask of track t in product p (2·A_i for a square), zero
  where track t does not enter product p. At most two terms are non-zero per slot.
- Regions are ordered by decreasing track and output counts, so that a ciphertext
  (N slots) holds regions of similar counts: the client uploads, per chunk of N slots,
  the tracks some region in it has, and the server returns the outputs some region in
  it has (`chunk_tracks`, `chunk_outputs`).
- A small region with many products (an attention row's Newton step at short
  lengths) would make its chunk return many outputs for few slots: below a size
  threshold, a region is *unrolled* into one region per product (its masks uploaded
  once per product, as pair-by-pair packing does). The threshold is the one among a
  few candidates that minimises the bytes of the whole layout.

Everything here is a function of the public plan (shapes and pairs) and the HE
parameters: both parties compute the same layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from common.mpc.correlations import GroupSpec
from common.mpc.ring import U64, Ring


@dataclass(frozen=True)
class Region:
    group: int  # index of the group in the plan
    shape: tuple[int, ...]  # the products' shape S
    tracks: tuple[int, ...]  # mask indices of the group, in track order
    pairs: tuple[tuple[int, int], ...]  # the group's products at S, in output order
    offset: int  # first slot

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class TrackLayout:
    """The public slot layout of every group's products (see the module docstring).

    `degree`: slots per ciphertext; `up_bytes` / `down_bytes`: bytes of one upload and
    one return, which weigh the choice of the unrolling threshold."""

    THRESHOLDS = (0, 256, 1024, 2560, 8192)

    def __init__(
        self,
        specs: list[GroupSpec],
        degree: int = 8192,
        up_bytes: float = 1.0,
        down_bytes: float = 1.0,
        thresholds: tuple[int, ...] = THRESHOLDS,
    ) -> None:
        self.degree = degree
        found: list[Region] = []
        for g, spec in enumerate(specs):
            by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}
            for i, j in spec.pairs:
                by_shape.setdefault(tuple(spec.pair_shape(i, j)), []).append((i, j))
            for shape, prs in by_shape.items():
                tracks = tuple(sorted({k for p in prs for k in p}))
                found.append(Region(g, shape, tracks, tuple(prs), 0))
        best: tuple[float, list[Region]] | None = None
        for thr in thresholds:
            regions = _place(found, thr)
            ups, outs = _presence(regions, degree)
            cost = up_bytes * sum(map(len, ups)) + down_bytes * sum(map(len, outs))
            if best is None or cost < best[0]:
                best = (cost, regions)
        self.regions: list[Region] = best[1] if best else []
        self.cost = best[0] if best else 0.0
        self.slots = sum(r.size for r in self.regions)
        self.chunk_tracks, self.chunk_outputs = _presence(self.regions, degree)
        n_t = max((len(r.tracks) for r in self.regions), default=0)
        n_p = max((len(r.pairs) for r in self.regions), default=0)
        self.track_extent = [
            max(r.offset + r.size for r in self.regions if len(r.tracks) > t) for t in range(n_t)
        ]
        self.output_extent = [
            max(r.offset + r.size for r in self.regions if len(r.pairs) > p) for p in range(n_p)
        ]

    @property
    def upload_slots(self) -> int:
        return sum(self.track_extent)

    @property
    def output_slots(self) -> int:
        return sum(self.output_extent)

    def uploads(self, masks: list[list[Ring]]) -> list[Ring]:
        """The client's upload vectors U_t (length `track_extent[t]`) from its shares."""
        out = [np.zeros(n, dtype=U64) for n in self.track_extent]
        for r in self.regions:
            ms = masks[r.group]
            for t, i in enumerate(r.tracks):
                out[t][r.offset : r.offset + r.size] = np.broadcast_to(ms[i], r.shape).ravel()
        return out

    def terms(self, masks: list[list[Ring]]) -> list[dict[int, Ring]]:
        """The server's operands: per output p, {track t: Y_{p,t}} (length
        `output_extent[p]`, zero where track t does not enter product p)."""
        out: list[dict[int, Ring]] = [{} for _ in self.output_extent]
        for r in self.regions:
            ms = masks[r.group]
            sl = slice(r.offset, r.offset + r.size)
            for p, (i, j) in enumerate(r.pairs):
                ti, tj = r.tracks.index(i), r.tracks.index(j)
                ext = self.output_extent[p]
                for t, partner, scale in ((ti, i, 2),) if i == j else ((ti, j, 1), (tj, i, 1)):
                    y = out[p].setdefault(t, np.zeros(ext, dtype=U64))
                    y[sl] = U64(scale) * np.broadcast_to(ms[partner], r.shape).ravel()
        return out

    def products(
        self, masks: list[list[Ring]], he_shares: list[Ring], specs: list[GroupSpec]
    ) -> list[dict[tuple[int, int], Ring]]:
        """Each group's product shares: this party's local product of its own shares
        plus its share of the cross terms (output vectors of length `output_extent`)."""
        out: list[dict[tuple[int, int], Ring]] = [{} for _ in specs]
        for r in self.regions:
            ms = masks[r.group]
            sl = slice(r.offset, r.offset + r.size)
            for p, (i, j) in enumerate(r.pairs):
                local = np.broadcast_to(ms[i], r.shape) * np.broadcast_to(ms[j], r.shape)
                out[r.group][(i, j)] = local + he_shares[p][sl].reshape(r.shape)
        return out


def _place(found: list[Region], threshold: int) -> list[Region]:
    """Regions below `threshold` slots unrolled into one per product, all sorted by
    decreasing track and output counts and laid one after another."""
    regions: list[Region] = []
    for r in found:
        if r.size < threshold and len(r.pairs) > 1:
            regions += [
                Region(r.group, r.shape, tuple(sorted({i, j})), ((i, j),), 0) for i, j in r.pairs
            ]
        else:
            regions.append(r)
    regions.sort(key=lambda r: (-len(r.tracks), -len(r.pairs)))  # stable: plan order otherwise
    out, offset = [], 0
    for r in regions:
        out.append(Region(r.group, r.shape, r.tracks, r.pairs, offset))
        offset += r.size
    return out


def _presence(regions: list[Region], degree: int) -> tuple[list[list[int]], list[list[int]]]:
    """Per chunk of `degree` slots, the tracks and the outputs some region in it has."""
    slots = sum(r.size for r in regions)
    chunks = -(-slots // degree)
    n_t = [0] * chunks
    n_p = [0] * chunks
    for r in regions:
        for c in range(r.offset // degree, (r.offset + r.size - 1) // degree + 1):
            n_t[c] = max(n_t[c], len(r.tracks))
            n_p[c] = max(n_p[c], len(r.pairs))
    return [list(range(t)) for t in n_t], [list(range(p)) for p in n_p]


def chunk(v: NDArray[np.uint64], c: int, n: int) -> NDArray[np.uint64]:
    """Slots [c·n, (c+1)·n) of v, zero-padded to n."""
    out = np.zeros(n, dtype=U64)
    part = v[c * n : (c + 1) * n]
    out[: part.size] = part
    return out
