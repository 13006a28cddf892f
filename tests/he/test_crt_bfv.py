import numpy as np
import pytest

from common.he.crt_bfv import CrtBfvParams
from common.mpc.ring import random_ring
from common.prg import SecureRng


def test_params_secure_and_distinct(he_params):
    assert he_params.poly_degree == 8192 and sum(he_params.coeff_bits) <= 218  # HE std, 128-bit
    assert len(set(he_params.plain_primes)) == he_params.max_primes
    assert he_params.primes_for(129) == 3  # element-wise triples
    assert he_params.primes_for(136) == 4  # matrix-triple cross terms


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
        flood = he_params.flood_bits(1, p / np.sqrt(12))
        raw = server.seal_result(0, acc, mask, coeffs=False, flood_bits=flood)
        assert len(raw) == server.return_size()
        out_ct = client.load_result(0, raw)
        want = [(int(a) * int(b) + int(m)) % p for a, b, m in zip(x, y, mask, strict=True)]
        assert [int(v) for v in client.decrypt(0, out_ct)] == want
        budgets.append(client.noise_budget(0, out_ct))
    # The noise the client sees is set by the flood, not by the server's operand.
    assert abs(budgets[0] - budgets[1]) <= 1
    assert min(budgets) >= 3  # margin left after flooding


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
