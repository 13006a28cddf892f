import math

import numpy as np
import pytest

from common.he.galois_merge import (
    Merger,
    galois_elements,
    merge_layout,
    merge_levels,
    merge_noise_bits,
)


def test_levels_and_elements():
    assert merge_levels(8192, 32, 8) == [9, 10, 11]
    assert galois_elements(8192, 8, 8) == [2049, 4097, 8193]  # 8193 = N + 1: X ↦ −X^…
    assert merge_levels(8192, 32, 1) == []
    for bad in ((8192, 24, 8), (8192, 32, 6), (8192, 8, 16)):
        with pytest.raises(ValueError):
            merge_levels(*bad)


def test_layout_offsets_and_scales():
    offsets, scales = merge_layout([True] * 8, 8192, 32)
    assert offsets.tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    assert scales.tolist() == [3] * 8
    # a merge doubles only where both subtrees hold an input: the tree pairs 2 with 6,
    # then {0} with {2, 6}; 3 stays alone among the odd inputs; the root pairs both
    _, scales = merge_layout([True, False, True, True, False, False, True, False], 8192, 32)
    assert scales.tolist() == [2, -1, 3, 1, -1, -1, 3, -1]
    _, scales = merge_layout([True, True, True], 8192, 32)  # padded to 4
    assert scales.tolist() == [2, 1, 2]


@pytest.fixture(scope="module")
def merger(he_pair, he_params):
    server, client = he_pair
    elements = sorted(set(galois_elements(8192, 32, 8) + galois_elements(8192, 8, 8)))
    keys = server.load_galois_keys(0, client.galois_keys(0, elements))
    pr = server.primes[0]
    return Merger(pr.context, pr.evaluator, keys, he_params.poly_degree)


def _cts(he_pair, msgs, switch=True):
    server, client = he_pair
    pr = server.primes[0]
    out = []
    for m in msgs:
        if m is None:
            out.append(None)
            continue
        ct = server.load(0, client.encrypt(0, m, coeffs=True))
        if switch:
            pr.evaluator.mod_switch_to_inplace(ct, pr.return_parms)
        out.append(ct)
    return out


@pytest.mark.parametrize(
    "lattice,present,first",
    [
        (8, [True] * 8, False),
        (32, [True, False, True, True, False, True, True, False], False),
        (32, [True] * 5, True),
    ],
)
def test_merge_is_exact(he_pair, he_params, merger, lattice, present, first):
    """Every input's lattice coefficients reappear at p + offset, times 2^scale mod p;
    the inputs' other coefficients (arbitrary here, cross terms in a product) vanish or
    stay off the used positions."""
    server, client = he_pair
    p = server.primes[0].p
    n = he_params.poly_degree
    rng = np.random.default_rng(3)
    msgs = [rng.integers(0, p, n, dtype=np.uint64) if ok else None for ok in present]
    cts = _cts(he_pair, msgs, switch=not first)
    budget_in = min(client.noise_budget(0, c) for c in cts if c is not None)
    out = merger.merge(cts, lattice)
    if first:  # merged at the first level, then switched down (the affordable flood)
        pr = server.primes[0]
        pr.evaluator.mod_switch_to_inplace(out, pr.return_parms)
        assert client.noise_budget(0, out) > 60
    got = client.decrypt(0, out, coeffs=True)
    offsets, scales = merge_layout(present, n, lattice)
    lat = np.arange(0, n, lattice)
    for j, m in enumerate(msgs):
        if m is None:
            continue
        pos = lat + offsets[j]
        want = (m[lat].astype(object) * (1 << int(scales[j]))) % p
        assert np.array_equal(got[pos].astype(object), want)
    if first:
        return
    # the measured noise stays within the bound that the flood will have to cover
    room = he_params.return_bits - math.log2(p) - 1
    merges = int(max(scales))
    bound = merge_noise_bits(room - budget_in + 1, merges, [60, 60, 60], 17, n)
    assert client.noise_budget(0, out) >= math.floor(room - bound) - 1


def test_flood_fits_only_when_merged_at_the_first_level(he_params):
    """The key switches' server-dependent noise must be flooded: over the 17-bit special
    prime that needs a switch to the return level after the merge (issue 13's plan)."""
    p = he_params

    def flood(bits: float) -> int:
        return math.ceil(bits) + p.stat_sec + 2 + math.ceil(p.session_bits / 2) + 1

    limit = p.return_bits - p.plain_bits - 3
    for terms, plain_max in ((12, 2.0**15), (48, 2.0**22)):
        merged_first = p.noise_bits(terms, plain_max, merges=4)
        assert flood(merged_first) <= limit
        at_return = merge_noise_bits(
            p.noise_bits(terms, plain_max, low=True), 4, list(p.coeff_bits[:-2]), 17, 8192
        )
        assert flood(at_return) > limit
