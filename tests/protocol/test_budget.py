"""Session budgets from the plan: memory and the largest message, before any work."""

import numpy as np

from common.mpc.correlations import GroupSpec, LinearSpec, Plan, pool_nbytes
from common.mpc.preprocessing import HeProvider
from common.mpc.roles import SERVER
from common.protocol.budget import online_frame, refusal, session_budget


def test_budget_bounds_the_messages_and_grows_with_the_plan():
    small = Plan(
        triples=1000,
        linears=[LinearSpec("w", 16, 64, 64)],
        groups=[GroupSpec(((16, 64), (16, 64)), ((0, 0), (0, 1)))],
        matmuls=[(2, 4, 16, 8, 16)],
    )
    big = Plan(
        triples=100_000,
        linears=[LinearSpec("w", 256, 384, 1536)],
        groups=[GroupSpec(((256, 1536), (256, 1536)), ((0, 0), (0, 1)))],
        matmuls=[(2, 12, 128, 32, 128)],
    )
    b_small = session_budget({"a": small}, SERVER, HeProvider())
    b_big = session_budget({"a": big}, SERVER, HeProvider())
    assert b_small.pool_bytes == pool_nbytes(small, SERVER)
    assert b_big.largest_frame > b_small.largest_frame >= online_frame(small) > 0
    assert b_big.peak_bytes > b_small.peak_bytes
    # an upload batch of one 384 × 1536 product is several ciphertexts of ~197 kB
    assert b_big.largest_frame > 10 * 197_000
    assert refusal(b_big, 1 << 31, None) is None
    assert "frame limit" in refusal(b_big, 1 << 20, None)
    assert "one session may use" in refusal(b_big, 1 << 31, b_big.peak_bytes - 1)
    assert refusal(b_big, 1 << 31, b_big.peak_bytes) is None


def test_estimated_upload_batch_is_an_upper_bound():
    """The bound the server enforces on an upload batch holds for real ciphertexts."""
    from common.he.crt_bfv import CrtBfvClient, CrtBfvParams
    from common.mpc.he_protocols import pack_blobs, upload_bound

    params = CrtBfvParams()
    client = CrtBfvClient(params)
    rng = np.random.default_rng(1)
    blobs = [
        client.encrypt(i % 3, rng.integers(0, 2**40, params.poly_degree, dtype=np.uint64))
        for i in range(6)
    ]
    assert len(pack_blobs(blobs)) <= upload_bound(params, len(blobs))


def test_sessions_beyond_the_statistical_budget_are_refused():
    """The plan's HE exposure (masked coefficients returned) is counted before any
    work; over the parameters' limit the session is refused with a clear message."""
    from common.he.crt_bfv import CrtBfvParams

    plan = Plan(triples=20_000, squares=10_000, wraps=9000, linears=[LinearSpec("w", 16, 64, 64)])
    prov = HeProvider()
    budget = session_budget({"a": plan, "b": plan}, SERVER, prov)
    # triples and squares: 3 and 2 chunks of 8192 slots under 4 primes; wraps 2 chunks
    # under 1; the linear layer 16·64 entries under its primes
    P_lin = 4
    assert budget.exposure == 2 * (4 * 8192 * 5 + 8192 * 2 + P_lin * 16 * 64)
    assert budget.exposure_limit == CrtBfvParams().exposure_limit
    assert refusal(budget, 1 << 31, None) is None
    tight = HeProvider(params=CrtBfvParams(session_bits=18))
    why = refusal(session_budget({"a": plan, "b": plan}, SERVER, tight), 1 << 31, None)
    assert why is not None and "statistical-security budget" in why
