"""Mask-group products with each mask uploaded once (`common.mpc.tracks`)."""

import math

import numpy as np

from common.mpc.correlations import GroupSpec, Plan
from common.mpc.preprocessing import HeProvider
from common.mpc.roles import SERVER
from common.mpc.tracks import TrackLayout
from common.prg import SecureRng
from common.transport import Channel, run_local

# Regions of different track and output counts, some larger than a ciphertext (8192
# slots) so that they straddle chunk boundaries, with squares, cross products and a
# broadcast factor.
SPECS = [
    GroupSpec(((6000,), (6000,)), ((0, 0), (0, 1))),
    GroupSpec(((3, 3000), (3, 1), (3, 3000), (3000,)), ((0, 0), (0, 1), (0, 2), (2, 3), (2, 2))),
    GroupSpec(((700,),), ((0, 0),)),
    GroupSpec(((9000,), (9000,), (9000,)), ((0, 1), (1, 2), (0, 2), (1, 1))),
]


def test_each_mask_goes_up_once_per_shape():
    layout = TrackLayout(SPECS)
    naive = sum(
        math.prod(s.pair_shape(i, j)) * (1 if i == j else 2) for s in SPECS for i, j in s.pairs
    )
    # group 0: 2 masks of 6000; group 1: masks 0, 2, 3 at (3, 3000) and mask 1 broadcast
    # to it; group 2: 700; group 3: 3 masks of 9000
    once = 2 * 6000 + 4 * 9000 + 700 + 3 * 9000
    assert layout.upload_slots == once < naive
    assert layout.output_slots == sum(
        math.prod(s.pair_shape(i, j)) for s in SPECS for i, j in s.pairs
    )
    # regions sorted by track count: track t and output p fill a prefix of the slots
    counts = [len(r.tracks) for r in layout.regions]
    assert counts == sorted(counts, reverse=True)
    assert layout.track_extent == sorted(layout.track_extent, reverse=True)


def test_products_exact_across_chunks():
    def body(ch: Channel):
        prov = HeProvider(rng=SecureRng(20 + ch.party))
        return prov.generate(ch, Plan(groups=list(SPECS)), {} if ch.party == SERVER else None)

    p0, p1 = run_local(body)
    for spec in SPECS:
        g0, g1 = p0.group(spec), p1.group(spec)
        masks = [a + b for a, b in zip(g0.masks, g1.masks, strict=True)]
        for i, j in spec.pairs:
            want = np.broadcast_to(masks[i], spec.pair_shape(i, j)) * np.broadcast_to(
                masks[j], spec.pair_shape(i, j)
            )
            assert np.array_equal(g0.products[(i, j)] + g1.products[(i, j)], want)


def test_small_regions_with_many_products_are_unrolled_and_exact():
    """Many-product groups of a few slots (Newton steps on attention rows at short
    lengths) beside a large two-mask group: sharing a ciphertext with them would cost
    the large group's chunks many returns, so they are laid out one product per region
    (still exact), which the cost of the layout must confirm."""
    pairs = ((0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 3), (0, 3))
    specs = [GroupSpec(((9000,), (9000,)), ((0, 1),))] + [
        GroupSpec(((40,),) * 4, pairs) for _ in range(30)
    ]
    layout = TrackLayout(specs, 8192, 3.0, 2.0)
    assert len(layout.regions) == 1 + 30 * len(pairs)  # all small ones unrolled

    shared = TrackLayout(specs, 8192, 3.0, 2.0, thresholds=(0,))
    assert len(shared.regions) == 1 + 30
    assert layout.cost < shared.cost

    def body(ch: Channel):
        prov = HeProvider(rng=SecureRng(30 + ch.party))
        return prov.generate(ch, Plan(groups=specs), {} if ch.party == SERVER else None)

    p0, p1 = run_local(body)
    for spec in specs:
        g0, g1 = p0.group(spec), p1.group(spec)
        masks = [a + b for a, b in zip(g0.masks, g1.masks, strict=True)]
        for i, j in spec.pairs:
            assert np.array_equal(g0.products[(i, j)] + g1.products[(i, j)], masks[i] * masks[j])


def test_products_exact_when_streamed_one_chunk_per_job(monkeypatch):
    """With a job budget below one chunk's working set (`JOB_BYTES`) the server
    streams the batch one chunk per job (`stream_groups`): each job is made as its
    uploads arrive and each chunk's returns go back in order; every product stays
    exact."""
    import common.mpc.he_protocols as hp
    from common.he.crt_bfv import CrtBfvParams

    monkeypatch.setattr(hp, "JOB_BYTES", 1)
    layout = TrackLayout(SPECS)
    groups = hp.stream_groups(None, hp.track_chunk_bytes(CrtBfvParams(), layout))
    assert [g.tolist() for g in groups] == [[c] for c in range(len(layout.chunk_tracks))]
    assert len(groups) > 1
    test_products_exact_across_chunks()


def test_stream_groups_cover_every_unit_in_order_within_the_budget(monkeypatch):
    import common.mpc.he_protocols as hp

    class Two:
        workers = 2

    costs = [5, 1, 1, 30, 2, 2, 2, 2, 2, 2] * 7
    for budget in (1, 8, 40, 10**9):
        monkeypatch.setattr(hp, "JOB_BYTES", budget)
        groups = hp.stream_groups(Two(), costs, min_units=2)
        assert np.concatenate(groups).tolist() == list(range(len(costs)))
        assert all(g.size == 1 or sum(costs[i] for i in g) <= budget for g in groups)
        # about 8 jobs per worker: none longer than an even cut into 16
        assert max(g.size for g in groups) <= -(-len(costs) // 16)
