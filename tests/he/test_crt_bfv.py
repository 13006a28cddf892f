import math

import numpy as np
import pytest

from common.he.compact import check_room
from common.he.crt_bfv import CrtBfvParams, flood_residues
from common.mpc.ring import random_ring
from common.prg import SecureRng


def test_params_secure_and_distinct(he_params):
    assert he_params.poly_degree == 8192 and sum(he_params.coeff_bits) <= 218  # HE std, 128-bit
    assert len(set(he_params.plain_primes)) == he_params.max_primes
    # masks 42 + session_bits above the value: 4 primes for every ring product
    assert he_params.mask_bits(129) == 129 + 42 + he_params.session_bits
    assert he_params.primes_for(129) == 4  # element-wise triples
    assert he_params.primes_for(140) == 4  # matrix-triple cross terms, k ≤ 2^11
    assert he_params.full_bits == 201 and he_params.return_bits == 180


def test_flooding_must_fit():
    with pytest.raises(ValueError, match="flooding"):
        CrtBfvParams(coeff_bits=(60, 40, 60, 38)).flood_bits(1, 2.0**57)


def test_slot_product_roundtrip_and_flooded_budget(he_pair, he_params):
    """Enc(x)·y + mask decrypts exactly under flooding, and flooding dominates the noise."""
    server, client = he_pair
    rng = np.random.default_rng(0)
    p = server.primes[0].p
    x = rng.integers(0, p, he_params.slots, dtype=np.uint64)
    budgets = []
    for y in (np.zeros_like(x), rng.integers(0, p, he_params.slots, dtype=np.uint64)):
        ct = server.load(0, client.encrypt(0, x))
        acc = server.dot_plain(0, [ct], [server.plain(0, y, coeffs=False)])
        mask = rng.integers(0, p, he_params.slots, dtype=np.uint64)
        flood = he_params.flood_bits(1, p / 2)
        raw = server.seal_result(0, acc, mask, coeffs=False, flood_bits=flood)
        assert len(raw) == server.return_size()
        out_ct = client.load_result(0, raw)
        want = [(int(a) * int(b) + int(m)) % p for a, b, m in zip(x, y, mask, strict=True)]
        assert [int(v) for v in client.decrypt(0, out_ct)] == want
        budgets.append(client.noise_budget(0, out_ct))
    # The noise the client sees is set by the flood, not by the server's operand.
    assert abs(budgets[0] - budgets[1]) <= 1
    assert min(budgets) >= 3  # margin left after flooding


@pytest.mark.parametrize("host", [0, 2])
def test_weight_products_on_the_return_level(he_pair, he_params, host):
    """Uploads made at the return level (`CrtBfvClient.encrypt_low`, the linear masks'
    path) decrypt to their message, and their products by small weights decrypt
    exactly, under the upload's own prime or in another prime's context, with noise
    inside `noise_bits(…, low=True)`; large plaintexts do not fit there."""
    server, client = he_pair
    rng = np.random.default_rng(4)
    n, terms, plain_max, i = he_params.slots, 6, 2**16, 2
    p = server.primes[i].p
    xs = [rng.integers(0, p, n, dtype=np.uint64) for _ in range(terms)]
    xs[0][:3] = [0, 1, p - 1]
    ws = [rng.choice([-plain_max, plain_max], n) for _ in range(terms)]
    blobs = [client.encrypt_low(i, x) for x in xs]
    assert len(blobs[0]) < len(client.encrypt(i, xs[0], True))
    assert len(blobs[0]) - he_params.upload_bytes_low < 200  # metadata and seed
    fresh = server.load(i, blobs[0], low=True)
    assert np.array_equal(client.decrypt(i, fresh, True), xs[0])
    with pytest.raises(ValueError, match="first level"):
        server.load(i, blobs[0])
    with pytest.raises(ValueError, match="return level"):
        server.load(i, client.encrypt(i, xs[0], True), low=True)
    cts = [server.to_ntt(host, server.load(i, b, host, low=True)) for b in blobs]
    pts = [
        server.to_ntt(
            host,
            server.plain(host, np.mod(w, server.primes[host].p).astype(np.uint64), True),
            True,
            low=True,
        )
        for w in ws
    ]
    if host == i:  # the product's own noise, before mask and flood
        acc = server.dot(host, cts, pts)
        server.primes[i].evaluator.transform_from_ntt_inplace(acc)
        used = math.log2(math.prod(server._moduli[i]) / p) - client.noise_budget(i, acc) - 1
        assert used <= he_params.noise_bits(terms, plain_max, low=True)
    acc = server.dot(host, cts, pts)
    flood = he_params.flood_bits(terms, plain_max, low=True)
    mask = rng.integers(0, p, n, dtype=np.uint64)
    raw = server.seal_result(i, acc, mask, coeffs=True, flood_bits=flood, host=host)
    want = np.zeros(n, dtype=object)
    for x, w in zip(xs, ws, strict=True):  # negacyclic product, exactly (20-bit limbs)
        for shift in (0, 20, 40):
            limb = ((x >> np.uint64(shift)) & np.uint64((1 << 20) - 1)).astype(np.int64)
            full = np.convolve(limb, w)
            full[: n - 1] -= full[n:]
            want += full[:n].astype(object) * (1 << shift)
    want = (want + mask.astype(object)) % p
    got = client.decrypt(i, client.load_result(i, raw), True).astype(object)
    assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="flooding"):
        he_params.flood_bits(64, 2.0**57, low=True)


def test_scaled_mask_equals_seal_add_plain(he_pair):
    """`_scaled_plain` (the mask Δ_i·m added in numpy when a product ran in another
    prime's context) is exactly what SEAL's add_plain adds, edge values included."""
    import tenseal.sealapi as seal

    from common.he.seal_io import split_ciphertext

    server, _ = he_pair
    n, levels = server.params.poly_degree, server.params.return_moduli
    for i, pr in enumerate(server.primes):
        m = np.random.default_rng(i).integers(0, pr.p, n, dtype=np.uint64)
        m[:4] = [0, 1, pr.p - 1, pr.p // 2]
        ct = seal.Ciphertext(pr.context)
        pr.extras["encryptor"].encrypt_zero(pr.return_parms, ct)
        _, before = split_ciphertext(server.io.members(ct), n, levels)
        pr.evaluator.add_plain_inplace(ct, server.plain(i, m, coeffs=True))
        _, after = split_ciphertext(server.io.members(ct), n, levels)
        got = server._scaled_plain(i, m)
        for j, q in enumerate(server._moduli[i]):
            assert np.array_equal(
                (after[0, j] + (np.uint64(q) - before[0, j])) % np.uint64(q), got[j]
            )


def test_rerandomiser_is_a_fresh_small_encryption_of_zero(he_pair):
    """u·pk + (e0, e1) made at the return level decrypts to 0 with small noise, and two
    of them differ (fresh u); its errors are centred binomial within ±21."""
    import tenseal.sealapi as seal

    from common.he.seal_io import split_ciphertext, wrap

    server, client = he_pair
    n, levels = server.params.poly_degree, server.params.return_moduli
    i = 1
    pr = server.primes[i]
    rr = server._rerandomiser(i, i)
    pr.evaluator.transform_from_ntt_inplace(rr)
    prefix, data = split_ciphertext(server.io.members(rr), n, levels)
    e = np.stack(server._small_errors(n))
    assert np.abs(e).max() <= 21 and abs(float(e.std()) - 3.24) < 0.1
    for j, q in enumerate(server._moduli[i]):
        data[:, j] = (data[:, j] + np.mod(e, np.int64(q)).astype(np.uint64)) % np.uint64(q)
    ct = server.io.load(seal.Ciphertext(pr.context), pr.context, wrap(prefix + data.tobytes()))
    assert not client.decrypt(i, ct, coeffs=True).any()
    # noise ≤ N·(19 + 21) + 21 < 2^19: the budget of a return-level ciphertext minus 19
    assert client.noise_budget(i, ct) >= server.params.return_bits - server.params.plain_bits - 21
    other = server._rerandomiser(i, i)
    pr.evaluator.transform_from_ntt_inplace(other)
    assert not np.array_equal(split_ciphertext(server.io.members(other), n, levels)[1], data)


def test_malformed_ciphertext_rejected(he_pair):
    server, client = he_pair
    blob = client.encrypt(0, np.zeros(8192, dtype=np.uint64))
    with pytest.raises(ValueError):
        server.load(0, blob[: len(blob) // 2])
    with pytest.raises(ValueError):
        server.load(0, b"\x00" * 100)
    with pytest.raises(ValueError, match="bytes"):
        client.load_result(0, b"\x00" * 10)


def test_coefficient_plaintext_roundtrip(he_pair):
    server, client = he_pair
    coeffs = random_ring(SecureRng(1), 8192) % np.uint64(server.primes[1].p)
    ct = server.load(1, client.encrypt(1, coeffs, coeffs=True))
    one = np.zeros(8192, dtype=np.uint64)
    one[0] = 1
    acc = server.dot_plain(1, [ct], [server.plain(1, one, coeffs=True)])
    raw = server.seal_result(1, acc, np.zeros(8192, np.uint64), coeffs=True, flood_bits=50)
    assert np.array_equal(client.decrypt(1, client.load_result(1, raw), coeffs=True), coeffs)


def test_flood_is_a_centred_sum_of_three_uniforms(he_pair, he_params):
    """The residues of `flood_residues` are those of one integer per coefficient, in
    (−1.5·2^W, 1.5·2^W), with the variance of three uniforms (2^2W / 4)."""
    server, _ = he_pair
    moduli = server._moduli[0]
    bits, n = 100, 4096
    res = flood_residues(SecureRng(5), bits, moduli, n)
    assert res.shape == (len(moduli), n)
    Q = math.prod(moduli)
    weights = [Q // q * pow(Q // q, -1, q) for q in moduli]
    xs = []
    for col in zip(*(r.tolist() for r in res), strict=True):
        x = sum(w * r for w, r in zip(weights, col, strict=True)) % Q
        xs.append(x - Q if x > Q // 2 else x)
    assert max(abs(x) for x in xs) < 3 << (bits - 1)
    scaled = np.array([x / 2.0**bits for x in xs])
    assert abs(scaled.mean()) < 0.05 and abs(scaled.var() - 0.25) < 0.03
    # below 64 bits the same sampler (one word per uniform)
    small = flood_residues(SecureRng(6), 20, moduli[:1], 10_000).astype(np.int64)
    small = np.where(small > moduli[0] // 2, small - np.int64(moduli[0]), small)
    assert np.abs(small).max() < 3 << 19 and abs(small.mean()) < 2**14


def test_hellinger_constant_of_the_flood():
    """docs/SECURITY.md bounds the flood's Hellinger distance under a shift e by
    H² ≤ e²·D/2 with D = Σ (√p(y) − √p(y−1))² ≤ 1.16/W² for the sum of three uniform
    integers in [0, W), W ≥ 64; check D and the resulting bound against direct sums."""
    for W in (64, 256, 1024, 4096):
        u = np.full(W, 1.0 / W)
        p = np.convolve(np.convolve(u, u), u)
        root = np.sqrt(np.concatenate([[0.0], p, [0.0]]))
        D = float(np.sum(np.diff(root) ** 2))
        assert D * W * W <= 1.16
        for e in (1, W // 64, W // 8):
            shifted = np.concatenate([np.zeros(e), p])
            base = np.concatenate([p, np.zeros(e)])
            h2 = 0.5 * float(np.sum((np.sqrt(base) - np.sqrt(shifted)) ** 2))
            assert h2 <= 0.5 * e * e * D <= 0.58 * (e / W) ** 2


def test_masks_and_floods_grow_with_the_session_budget(he_pair, he_params):
    """Session-level security: masks and floods widen with log2 of the exposure limit
    (masks by all of it, floods by half), and the default fits every product kind."""
    p = he_params
    wide = CrtBfvParams(session_bits=p.session_bits + 4)
    assert wide.mask_bits(129) == p.mask_bits(129) + 4
    assert wide.flood_bits(2, 2.0**57) == p.flood_bits(2, 2.0**57) + 2
    for terms, plain_max in ((1, 2.0**57), (2, 2.0**57), (512, 2.0**57), (3072, 2.0**28)):
        flood = p.flood_bits(terms, plain_max)
        assert flood - p.noise_bits(terms, plain_max) >= p.stat_sec + 2 + p.session_bits / 2
        for q in (p.plain_primes[0], p.plain_primes[-1]):
            check_room(he_pair[0]._moduli[0], q, p.poly_degree, flood)


def test_exposure_is_bounded_per_session(he_pair, he_params):
    server, _ = he_pair
    saved = server.exposed
    try:
        server.exposed = he_params.exposure_limit - 10
        server.expose(10)
        with pytest.raises(ValueError, match="statistical-security budget"):
            server.expose(1)
        assert server.exposed == he_params.exposure_limit
    finally:
        server.exposed = saved
