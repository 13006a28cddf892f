"""HE preprocessing: exact correlations in Z_2^64 and uniform views."""

import time

import numpy as np
import pytest

from common.mpc.correlations import GroupSpec, LinearSpec, Plan, PreprocessingError
from common.mpc.he_protocols import he_products, unpack_blobs
from common.mpc.preprocessing import HeProvider, InsecureDealer, InsecureDealerWarning
from common.mpc.ring import ring_matmul, ring_matmul_public
from common.mpc.roles import CLIENT, SERVER
from common.prg import SecureRng
from common.transport import Channel, NullChannel, run_local
from tests.conftest import CHI2_LIMIT, chi2_uniform_bytes


def _gen(plan, weights=None, executor=None):
    def body(ch: Channel):
        ex = executor if ch.party == SERVER else None
        prov = HeProvider(rng=SecureRng(10 + ch.party), executor=ex)
        return prov.generate(ch, plan, weights if ch.party == SERVER else None), ch.meter

    return run_local(body)


def test_triples_squares_exact():
    plan = Plan(triples=9000, squares=100)
    (p0, _m0), (p1, m1) = _gen(plan)
    a0, b0, c0 = p0.triples(9000)
    a1, b1, c1 = p1.triples(9000)
    assert np.array_equal(c0 + c1, (a0 + a1) * (b0 + b1))
    s0, s1 = p0.squares(100), p1.squares(100)
    assert np.array_equal(s0[1] + s1[1], (s0[0] + s1[0]) ** 2)
    # 2 chunks of 8192 triples: 4 primes × 2 seeded ciphertexts up, 4 results down per chunk
    tri = m1.breakdown(by=("phase", "op"))[("offline", "triples")]
    per = (tri.sent_bytes + tri.recv_bytes) / 9000
    assert tri.rounds == 2 and per < 2 * 400


def test_exposure_counted_as_it_goes_equals_the_plan_estimate():
    """The server counts every masked coefficient it returns (`CrtBfvServer.expose`);
    the count of a whole offline phase is the plan's estimate, which the budget checks
    against the session's statistical limit before any work."""
    plan = Plan(
        triples=9000,
        squares=100,
        wraps=500,
        linears=[LinearSpec("w", 8, 16, 24)],
        groups=GROUPS[:1],
        matmuls=[(2, 8, 16, 8)],
    )
    weights = {"w": SecureRng(3).below(1 << 10, 16 * 24).reshape(16, 24) - (1 << 9)}

    def body(ch: Channel):
        prov = HeProvider(rng=SecureRng(30 + ch.party))
        prov.generate(ch, plan, weights if ch.party == SERVER else None)
        return prov

    server, _ = run_local(body)
    assert server.he.exposed == server.exposure(plan) > 0


GROUPS = [
    # a per-row factor times a matrix, a square and a cross product of equal shapes
    GroupSpec(((300,), (300,), (300,)), ((0, 0), (0, 1), (1, 2))),
    GroupSpec(((5, 40), (5, 1), (40,)), ((0, 1), (1, 1), (0, 2))),
]


@pytest.mark.parametrize("provider", ["he", "dealer"])
def test_mask_group_products_exact(provider):
    plan = Plan(groups=list(GROUPS))
    if provider == "he":
        (p0, _), (p1, _) = _gen(plan)
    else:

        def body(ch: Channel):
            with pytest.warns(InsecureDealerWarning):
                dealer = InsecureDealer()
            return dealer.generate(ch, plan)

        p0, p1 = run_local(body)
    for spec in GROUPS:
        g0, g1 = p0.group(spec), p1.group(spec)
        masks = [a + b for a, b in zip(g0.masks, g1.masks, strict=True)]
        for shape, m in zip(spec.shapes, masks, strict=True):
            assert m.shape == shape
        for i, j in spec.pairs:
            assert np.array_equal(g0.products[(i, j)] + g1.products[(i, j)], masks[i] * masks[j])
    with pytest.raises(PreprocessingError, match="out of mask groups"):
        p0.group(GROUPS[0])


def test_group_mismatch_is_a_clear_error():
    (p0, _), _ = _gen(Plan(groups=[GROUPS[0]]))
    with pytest.raises(PreprocessingError, match="mask group mismatch"):
        p0.group(GROUPS[1])


def test_group_spec_rejects_bad_pairs():
    with pytest.raises(ValueError, match="bad pair"):
        GroupSpec(((3,),), ((0, 1),))
    with pytest.raises(ValueError):
        GroupSpec(((3,), (4,)), ((0, 1),))  # shapes that do not broadcast


def test_opened_group_sends_each_value_once():
    """x opened once serves x², x·y and x·w; the per-row w is sent once per row."""
    from common.mpc.engine import Mpc
    from common.mpc.ring import FixedPoint
    from common.mpc.runner import run_local_program

    fxp = FixedPoint()
    rng = np.random.default_rng(5)
    x, y, w = rng.uniform(-3, 3, (8, 16)), rng.uniform(-3, 3, (8, 16)), rng.uniform(-3, 3, (8, 1))
    spec = GroupSpec(((8, 16), (8, 16), (8, 1)), ((0, 0), (0, 1), (0, 2)))

    def prog(mpc: Mpc, data):
        def inp(v):
            return mpc.share(CLIENT, v if mpc.party == CLIENT else None, v.shape)

        xs, ys, ws = inp(x), inp(y), inp(w)
        with mpc.ch.scope(op="t"):
            g = mpc.group(spec)
            g.open({0: xs, 1: ys, 2: ws})
            out = g.products([(0, 0), (0, 1), (0, 2)])
        with pytest.raises(ValueError, match="already open"):
            g.open({0: xs})
        with pytest.raises(ValueError, match="not planned"):
            g.product(1, 2)
        return [mpc.reveal(v, to=CLIENT) for v in out]

    _s, c = run_local_program(prog, None, {}, provider="insecure_dealer", fxp=fxp)
    tol = 4 * 2.0**-fxp.frac_bits
    for got, want in zip(c.result, (x * x, x * y, x * w), strict=True):
        assert np.allclose(got, want, atol=tol)
    t = c.meter.breakdown(by=("phase", "op"))[("online", "t")]
    # the opening, then one exact truncation of the three products together
    assert t.sent_msgs == 2 and t.rounds == 2
    assert t.sent_bytes == 8 * (128 + 128 + 8) + (3 * 128) // 8


def test_matrix_triple_and_linear_mask_exact():
    rng = np.random.default_rng(3)
    w = rng.integers(-(2**20), 2**20, (24, 10))
    spec = LinearSpec("w", 5, 24, 10)
    plan = Plan(matmuls=[(2, 6, 16, 4)], linears=[spec])
    (p0, _), (p1, _) = _gen(plan, {"w": w})
    A0, B0, C0 = p0.matmul_triple((2, 6, 16, 4))
    A1, B1, C1 = p1.matmul_triple((2, 6, 16, 4))
    assert np.array_equal(C0 + C1, ring_matmul(A0 + A1, B0 + B1))
    l0, l1 = p0.linear_mask(spec), p1.linear_mask(spec)
    assert l0.r is None and l1.r is not None
    assert np.array_equal(l0.share + l1.share, ring_matmul_public(l1.r, w))


def test_stacked_matrix_triples_exact():
    """Small matrices (one attention head each, batch × heads of them) share stacked HE
    products; every triple of the batch stays exact and the blocks do not mix."""
    from common.he.crt_bfv import CrtBfvClient, CrtBfvParams
    from common.mpc.preprocessing import matmul_group_size

    shape = (2, 12, 10, 32, 10)  # batch 2 × 12 heads of (10×32)·(32×10): QKᵀ of 10 tokens
    assert matmul_group_size(24, 10, 32, 10, CrtBfvClient(CrtBfvParams())) > 1
    (p0, _), (p1, _) = _gen(Plan(matmuls=[shape]), {})
    A0, B0, C0 = p0.matmul_triple(shape)
    A1, B1, C1 = p1.matmul_triple(shape)
    A, B = A0 + A1, B0 + B1
    for idx in np.ndindex(2, 12):
        assert np.array_equal(C0[idx] + C1[idx], ring_matmul(A[idx], B[idx]))


def test_weights_beyond_public_bound_rejected():
    w = np.full((4, 4), 2**40)
    with pytest.raises(ValueError, match="bound"):
        _gen(Plan(linears=[LinearSpec("w", 2, 4, 4)]), {"w": w})


def test_plan_mismatch_detected():
    def body(ch):
        plan = Plan(triples=10 if ch.party == 0 else 11)
        return InsecureDealer().generate(ch, plan)

    with pytest.raises(Exception, match="different programs"):
        run_local(body)


def test_dealer_warns():
    with pytest.warns(InsecureDealerWarning):
        InsecureDealer()


def _client_view_of_products(server_value: int) -> np.ndarray:
    """What the client reconstructs from the server's reply, for a fixed server operand."""
    n = 8192

    def body(ch):
        rng = SecureRng(ch.party + 100)
        prov = HeProvider(rng=rng)
        prov.setup(ch)
        if ch.party == CLIENT:
            ops = [np.full(n, 12345, np.uint64)]
        else:
            ops = [np.full(n, server_value, np.uint64)]
        return he_products(ch, prov.he, ops, rng)

    _, client_share = run_local(body)
    return client_share


@pytest.mark.parametrize("server_value", [0, 2**64 - 1])
def test_client_view_uniform_whatever_server_holds(server_value):
    view = _client_view_of_products(server_value)
    assert chi2_uniform_bytes(view) < CHI2_LIMIT


def _client_view_of_bit_products(server_bit: int) -> tuple[np.ndarray, int]:
    """The client's share of u·v for bit operands (its bits all 1, the server's all
    `server_bit`), and the prime it was masked under."""
    n = 8192

    def body(ch):
        rng = SecureRng(ch.party + 200)
        prov = HeProvider(rng=rng)
        prov.setup(ch)
        ops = [np.full(n, 1 if ch.party == CLIENT else server_bit, np.uint64)]
        return he_products(ch, prov.he, ops, rng, operand_bits=1), prov.he.primes[0].p

    (s_srv, p), (s_cli, _) = run_local(body)
    assert np.array_equal(s_srv + s_cli, np.full(n, server_bit, np.uint64))
    return s_cli, p


@pytest.mark.parametrize("server_bit", [0, 1])
def test_bit_products_are_a_one_time_pad_mod_p(server_bit):
    """Bit triples take one prime and a mask uniform mod p: the client's share, read as
    a centred residue, is uniform over the p residues whatever the server's bit."""
    view, p = _client_view_of_bit_products(server_bit)
    centred = view.view(np.int64)
    assert np.abs(centred).max() <= (p + 1) // 2
    buckets = ((centred + (p - 1) // 2).astype(np.float64) / p * 256).astype(np.int64)
    counts = np.bincount(np.clip(buckets, 0, 255), minlength=256)
    exp = view.size / 256
    assert float(((counts - exp) ** 2 / exp).sum()) < CHI2_LIMIT


@pytest.mark.parametrize("weight", [0, 2**20 - 1])
def test_client_view_of_merged_linear_returns_uniform(weight):
    """On the linear masks' chain (`CrtBfvParams.linear`) returns are merged by key
    switching, whose noise depends on the weights: the client's shares of X·W are
    uniform whatever the server's W (all zero, or all at the card's bound)."""
    from common.he.crt_bfv import CrtBfvClient, CrtBfvParams, CrtBfvServer
    from common.mpc.he_protocols import galois_elements_for, he_matmul, matmul_layout

    params = CrtBfvParams().linear()
    client = CrtBfvClient(params)
    server = CrtBfvServer(params, client.public_keys(), SecureRng(17))
    m, k, n = 16, 64, 2048
    layout = matmul_layout(params, (m, k, n), 21)
    assert layout.merge > 1
    elements = galois_elements_for(params, [layout])
    server.galois_blobs = tuple(client.galois_keys(i, elements) for i in range(layout.primes))
    x = np.full((m, k), 2**64 - 1, dtype=np.uint64)
    w = np.full((k, n), weight, dtype=np.int64)

    def body(ch: Channel):
        if ch.party == CLIENT:
            return he_matmul(ch, client, x, (m, k, n), 21, SecureRng(18))
        return he_matmul(ch, server, w, (m, k, n), 21, SecureRng(19))

    s_srv, s_cli = run_local(body)
    assert np.array_equal(s_srv + s_cli, ring_matmul_public(x, w))
    assert chi2_uniform_bytes(s_cli) < CHI2_LIMIT


def test_server_view_of_linear_input_uniform():
    """The only online message of a linear layer, x_c − r, is uniform for any input."""
    from common.mpc.ring import FixedPoint
    from common.mpc.runner import run_local_program

    seen = []

    def prog(m, data):
        x = m.share(CLIENT, (data or {}).get("x") if m.party == CLIENT else None, (64, 128))
        if m.party == SERVER and not isinstance(m.ch, NullChannel):
            orig = m.ch.recv_array

            def spy(tag, shape, dtype):
                arr = orig(tag, shape, dtype)
                if tag == "linear":
                    seen.append(arr.copy())
                return arr

            m.ch.recv_array = spy
        return m.linear(x, "w", 8, weight=(data or {}).get("w"))

    for xval in (0.0, 1000.0):
        x = np.full((64, 128), xval)
        run_local_program(
            prog, {"w": np.ones((128, 8))}, {"x": x}, provider="insecure_dealer", fxp=FixedPoint()
        )
    assert len(seen) == 2
    for view in seen:
        assert chi2_uniform_bytes(view) < CHI2_LIMIT


def test_beaver_messages_uniform():
    """Opened differences x − a are uniform whatever x is."""
    from common.mpc.runner import run_local_program

    seen = []

    def prog(m, data):
        x = m.share(SERVER, (data or {}).get("x") if m.party == SERVER else None, (20000,))
        if m.party == CLIENT and not isinstance(m.ch, NullChannel):
            orig = m.ch.exchange_array

            def spy(tag, arr):
                out = orig(tag, arr)
                if tag == "beaver":
                    seen.append(out.copy())
                return out

            m.ch.exchange_array = spy
        return m.mul(x, x)

    for xval in (0.0, -7.5):
        run_local_program(prog, {"x": np.full(20000, xval)}, None, provider="insecure_dealer")
    assert len(seen) == 2
    for view in seen:
        assert chi2_uniform_bytes(view) < CHI2_LIMIT


def test_bound_openings_and_lookup_messages_uniform():
    """The server-only opening of a bound linear output (client's view, HE offline
    phase) and the client's masked one-hot (server's view) are uniform whatever the
    data are."""
    from common.mpc.correlations import Bind
    from common.mpc.ring import FixedPoint
    from common.mpc.runner import run_local_program

    fxp = FixedPoint(exact_trunc=False)  # binds hold under local truncation only
    seen: dict[str, list] = {"open": [], "lookup": []}
    V = 4096
    bind = Bind("w", fxp.frac_bits, (8, 1024), (0, 1024), (8, 1024), (0, 1))

    def prog(m, data):
        data = data or {}
        if not isinstance(m.ch, NullChannel):
            orig = m.ch.recv_array

            def spy(tag, shape, dtype):
                arr = orig(tag, shape, dtype)
                if tag in seen:
                    seen[tag].append(arr.copy())
                return arr

            m.ch.recv_array = spy
        x = m.share(CLIENT, data.get("x") if m.party == CLIENT else None, (8, 4))
        y = m.linear(x, "w", 1024, weight=data.get("w"))
        g = m.group(GroupSpec(((8, 1024),), ((0, 0),), (bind,)))
        g.open({0: y})
        m.lookup(data.get("oh"), (1, V), "t", 2, data.get("t"))

    for val in (0.0, 50.0):
        oh = np.zeros((1, V), dtype=np.int64)
        oh[0, 0 if val == 0 else V - 1] = 1
        server = {"w": np.full((4, 1024), 2.0), "t": np.full((V, 2), val)}
        run_local_program(
            prog, server, {"x": np.full((8, 4), val), "oh": oh}, provider="he", fxp=fxp
        )
    assert len(seen["open"]) == 2 and len(seen["lookup"]) == 2
    for view in seen["open"]:
        assert chi2_uniform_bytes(view) < CHI2_LIMIT
    for packed in seen["lookup"]:  # 6-byte values: their top byte is byte 5
        assert chi2_uniform_bytes(packed[:, 5].astype(np.uint64) << np.uint64(56)) < CHI2_LIMIT


def test_truncated_batch_rejected():
    with pytest.raises(ValueError):
        unpack_blobs(b"\x02\x00\x00\x00\x05\x00\x00\x00ab", 2)


@pytest.mark.parametrize("provider", ["he", "insecure_dealer"])
def test_bound_masks_open_linear_outputs_from_the_server_alone(provider):
    """A linear output opened into a group and into a matrix product: the client sends
    nothing for it (its share is the mask's), the server 8 bytes per element; results
    equal numpy's. Binds hold under local truncation only (an exact truncation makes the
    client's output share data-dependent): `Mpc` refuses them otherwise."""
    from common.mpc.correlations import Bind
    from common.mpc.engine import Mpc
    from common.mpc.ring import FixedPoint
    from common.mpc.runner import run_local_program

    fxp = FixedPoint(exact_trunc=False)
    f = fxp.frac_bits
    rng = np.random.default_rng(8)
    x, w = rng.uniform(-1, 1, (6, 8)), rng.uniform(-0.5, 0.5, (8, 12))
    y = x @ w  # (6, 12): columns 0–5 are "a" (6×6), 6–11 "b"
    lin = Bind("w", f, (6, 12), (0, 12), (6, 12), (0, 1))
    a_bind = Bind("w", f, (6, 12), (0, 6), (6, 6), (0, 1))
    bt_bind = Bind("w", f, (6, 12), (6, 12), (6, 6), (1, 0))  # b transposed

    def prog(mpc: Mpc, data):
        xs = mpc.share(CLIENT, data, (6, 8))
        out = mpc.linear(xs, "w", 12, w if mpc.party == SERVER else None)
        with mpc.ch.scope(op="bound"):
            g = mpc.group(GroupSpec(((6, 12),), ((0, 0),), (lin,)))
            g.open({0: out})
            sq = g.product(0, 0)
            prod = mpc.matmul(out[:, :6].copy(), out[:, 6:].T.copy(), (a_bind, bt_bind))
        return [mpc.reveal(sq, to=CLIENT), mpc.reveal(prod, to=CLIENT)]

    s, c = run_local_program(prog, None, x, provider=provider, fxp=fxp)
    tol = 1e-2
    assert np.allclose(c.result[0], y * y, atol=tol)
    assert np.allclose(c.result[1], y[:, :6] @ y[:, 6:].T, atol=tol)
    sent_c = c.meter.breakdown(by=("phase", "op"))[("online", "bound")]
    sent_s = s.meter.breakdown(by=("phase", "op"))[("online", "bound")]
    assert sent_c.sent_bytes == 0
    assert sent_s.sent_bytes == 8 * (72 + 36 + 36)
    with pytest.raises(ValueError, match="local truncation"):
        run_local_program(prog, None, x, provider=provider, fxp=FixedPoint())


def test_bound_mask_that_does_not_match_is_a_clear_error():
    """The client checks that its share is the mask's (a layout bug would otherwise
    silently give wrong products)."""
    from common.mpc.correlations import Bind
    from common.mpc.engine import Mpc
    from common.mpc.ring import FixedPoint
    from common.mpc.runner import run_local_program

    fxp = FixedPoint(exact_trunc=False)
    w = np.eye(4)
    wrong = Bind("w", fxp.frac_bits, (2, 4), (0, 4), (2, 4), (0, 1))

    def prog(mpc: Mpc, data):
        xs = mpc.share(CLIENT, data, (2, 4))
        out = mpc.linear(xs, "w", 4, w if mpc.party == SERVER else None)
        g = mpc.group(GroupSpec(((2, 4),), ((0, 0),), (wrong,)))
        g.open({0: mpc.add_public(out, 1.0) + out})  # not the linear output itself
        return None

    with pytest.raises(Exception, match="bound mask does not match"):
        run_local_program(prog, None, np.ones((2, 4)), provider="insecure_dealer", fxp=fxp)


@pytest.mark.slow
def test_worker_processes_give_exact_correlations():
    """The server's HE work in two worker processes, streamed (several products and
    chunks per batch, jobs made as their uploads arrive): every kind stays exact, and
    the workers are gone after close."""
    from common.he.executor import ProcessExecutor

    rng = np.random.default_rng(3)
    w = rng.integers(-(2**20), 2**20, (24, 300))
    w2 = rng.integers(-(2**20), 2**20, (300, 40))
    spec = LinearSpec("w", 5, 24, 300)
    spec2 = LinearSpec("w2", 7, 300, 40)
    groups = [GroupSpec(((9000,), (9000,)), ((0, 0), (0, 1))), GroupSpec(((700,),), ((0, 0),))]
    plan = Plan(
        triples=20000,
        squares=9000,
        wraps=30000,
        matmuls=[(1, 6, 16, 4), (3, 8, 4, 8)],
        linears=[spec, spec2],
        groups=groups,
    )
    ex = ProcessExecutor(2)
    try:
        (p0, _), (p1, _) = _gen(plan, {"w": w, "w2": w2}, executor=ex)
        pids = ex.pids()
    finally:
        ex.close()
    assert len(pids) == 2
    a0, b0, c0 = p0.triples(20000)
    a1, b1, c1 = p1.triples(20000)
    assert np.array_equal(c0 + c1, (a0 + a1) * (b0 + b1))
    s0, s1 = p0.squares(9000), p1.squares(9000)
    assert np.array_equal(s0[1] + s1[1], (s0[0] + s1[0]) ** 2)
    A0, B0, C0 = p0.matmul_triple((1, 6, 16, 4))
    A1, B1, C1 = p1.matmul_triple((1, 6, 16, 4))
    assert np.array_equal(C0 + C1, ring_matmul(A0 + A1, B0 + B1))
    A0, B0, C0 = p0.matmul_triple((3, 8, 4, 8))
    A1, B1, C1 = p1.matmul_triple((3, 8, 4, 8))
    assert np.array_equal(C0 + C1, ring_matmul(A0 + A1, B0 + B1))
    for sp, wt in ((spec, w), (spec2, w2)):
        l0, l1 = p0.linear_mask(sp), p1.linear_mask(sp)
        assert np.array_equal(l0.share + l1.share, ring_matmul_public(l1.r, wt))
    for g in groups:
        g0, g1 = p0.group(g), p1.group(g)
        masks = [a + b for a, b in zip(g0.masks, g1.masks, strict=True)]
        for i, j in g.pairs:
            assert np.array_equal(g0.products[(i, j)] + g1.products[(i, j)], masks[i] * masks[j])
    u0, v0 = p0.wraps(30000)
    u1, v1 = p1.wraps(30000)
    assert np.array_equal(v0 + v1, u0.astype(np.uint64) * u1.astype(np.uint64))
    for pid in pids:
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
        assert not _alive(pid), "a worker outlived close()"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours is dead too
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


@pytest.mark.slow
def test_workers_exit_when_the_server_is_killed(tmp_path):
    """A SIGKILLed parent leaves no orphan HE worker behind."""
    import subprocess
    import sys

    code = (
        "import os, sys, time\n"
        "from common.he.executor import ProcessExecutor\n"
        "ex = ProcessExecutor(2)\n"
        "ex.map(abs, [-1, -2, -3, -4])\n"
        "print(' '.join(map(str, ex.pids())), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_pid_exists(p) for p in pids):
        time.sleep(0.2)
    assert not any(_pid_exists(p) for p in pids), "orphan HE workers"


def _pid_exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_matmul_returns_only_the_wanted_entries():
    """`he_matmul(…, wanted)`: the wanted entries are exact, the client's share of the
    others is 0, and the returns shrink by the c0 coefficients not sent (a block with
    nothing wanted is not returned at all)."""
    from common.he.crt_bfv import CrtBfvClient, CrtBfvParams, CrtBfvServer
    from common.mpc.he_protocols import he_matmul

    params = CrtBfvParams()
    client = CrtBfvClient(params)
    server = CrtBfvServer(params, client.public_keys(), SecureRng(7))
    rng = np.random.default_rng(5)
    m, k, n = 30, 40, 30
    x = rng.integers(0, 2**63, (m, k), dtype=np.uint64) * np.uint64(2)
    w = rng.integers(-(2**20), 2**20, (k, n))
    wanted = np.kron(np.eye(3, dtype=bool), np.ones((10, 10), dtype=bool))

    def run(want):
        def body(ch: Channel):
            if ch.party == CLIENT:
                out = he_matmul(ch, client, x, (m, k, n), 21, SecureRng(8), wanted=want)
            else:
                out = he_matmul(ch, server, w, (m, k, n), 21, SecureRng(9), wanted=want)
            return out, ch.meter.totals().recv_bytes

        (s_srv, _), (s_cli, down) = run_local(body)
        return s_srv, s_cli, down

    s_srv, s_cli, down_part = run(wanted)
    full = ring_matmul_public(x, w)
    assert np.array_equal((s_srv + s_cli)[wanted], full[wanted])
    assert not s_cli[~wanted].any()
    f_srv, f_cli, down_all = run(None)
    assert np.array_equal(f_srv + f_cli, full)
    assert down_part < down_all


def test_cross_matmul_sums_both_terms_in_one_return():
    """`he_cross_matmul_many`: X·W + X'·Y exact mod 2^64 for uniform ring operands on
    both sides (padded blocks, the wanted entries only), with one return per output
    block: half the returns, and fewer bytes down, than the two cross terms as two
    `he_matmul` calls."""
    from common.he.crt_bfv import CrtBfvClient, CrtBfvParams, CrtBfvServer
    from common.mpc.he_protocols import cross_matmul_layout, he_cross_matmul_many, he_matmul

    params = CrtBfvParams()
    client = CrtBfvClient(params)
    server = CrtBfvServer(params, client.public_keys(), SecureRng(7))
    rng = np.random.default_rng(11)
    m, k, n = 30, 33, 30  # 3 stacked 10×33·33×10 products, diagonal blocks wanted

    def ring(shape):
        return rng.integers(0, 2**64, shape, dtype=np.uint64)

    x, y, xs, w = ring((m, k)), ring((k, n)), ring((m, k)), ring((k, n))
    wanted = np.kron(np.eye(3, dtype=bool), np.ones((10, 10), dtype=bool))

    def cross(ch: Channel):
        if ch.party == CLIENT:
            item = (x, y, (m, k, n), (10, 10))
        else:
            item = (xs.view(np.int64), w.view(np.int64), (m, k, n), (10, 10))
        (out,) = he_cross_matmul_many(ch, client if ch.party == CLIENT else server,
                                      [item], SecureRng(8 + ch.party))  # fmt: skip
        return out, ch.meter.totals().recv_bytes

    (s_srv, _), (s_cli, down) = run_local(cross)
    want = ring_matmul(x, w) + ring_matmul(xs, y)
    assert np.array_equal((s_srv + s_cli)[wanted], want[wanted])
    assert not s_cli[~wanted].any()

    def two(ch: Channel):
        he = client if ch.party == CLIENT else server
        if ch.party == CLIENT:
            a = he_matmul(ch, he, x, (m, k, n), 63, SecureRng(8), wanted=wanted)
            b = he_matmul(ch, he, y.T.copy(), (n, k, m), 63, SecureRng(8), wanted=wanted.T)
        else:
            a = he_matmul(ch, he, w.view(np.int64), (m, k, n), 63, SecureRng(9), wanted=wanted)
            b = he_matmul(ch, he, xs.T.copy().view(np.int64), (n, k, m), 63, SecureRng(9),
                          wanted=wanted.T)  # fmt: skip
        return a, b, ch.meter.totals().recv_bytes

    (a0, b0, _), (a1, b1, down_two) = run_local(two)
    assert np.array_equal((a0 + a1 + (b0 + b1).T)[wanted], want[wanted])
    assert cross_matmul_layout(params, (m, k, n)).primes == 4
    assert down < down_two


@pytest.mark.parametrize(
    "rhs_bits,merge", [(21, 1), (21, 16), (63, 16), (21, "linear"), (21, "linear-wanted")]
)
def test_matmul_exact_with_zero_weight_columns(rhs_bits, merge):
    """All primes' products share one weight NTT when W is small (rhs_bits 21): at the
    return level from uploads made there, or (merge) at the first level with groups of
    block columns merged into one return by Galois automorphisms; neither when W is a
    ring share (63). On the linear masks' own chain (`CrtBfvParams.linear`: returns at
    the first level, a 38-bit special prime) the merge runs at the return level, with
    or without `wanted`. An all-zero W block column still decrypts under each prime's
    own key, merged or not."""
    from common.he.crt_bfv import CrtBfvClient, CrtBfvParams, CrtBfvServer
    from common.mpc.he_protocols import galois_elements_for, he_matmul, matmul_layout

    linear = isinstance(merge, str)
    params = CrtBfvParams().linear() if linear else CrtBfvParams(merge_max=merge)
    client = CrtBfvClient(params)
    server = CrtBfvServer(params, client.public_keys(), SecureRng(7))
    rng = np.random.default_rng(6)
    m, k, n = 8, 64, 600
    x = rng.integers(0, 2**63, (m, k), dtype=np.uint64)
    w = rng.integers(-(2**20), 2**20, (k, n))
    w[:, 100:] = 0  # whole block columns of zeros
    wanted = None
    if merge == "linear-wanted":
        wanted = rng.random((m, n)) < 0.3
        wanted[:, 200:300] = False  # whole blocks with nothing wanted

    layout = matmul_layout(params, (m, k, n), rhs_bits)
    elements = galois_elements_for(params, [layout])
    if elements:
        server.galois_blobs = tuple(client.galois_keys(i, elements) for i in range(layout.primes))

    def body(ch: Channel):
        if ch.party == CLIENT:
            return he_matmul(ch, client, x, (m, k, n), rhs_bits, SecureRng(8), wanted=wanted)
        return he_matmul(ch, server, w, (m, k, n), rhs_bits, SecureRng(9), wanted=wanted)

    want = {(21, 1): (True, True, 1), (63, 16): (False, False, 1)}.get((rhs_bits, merge))
    got = (layout.shared, layout.low, layout.merge)
    assert got == want if want else (got[:2] == (True, False) and got[2] > 1 and elements)
    if linear:
        assert params.return_bits == params.full_bits and params.coeff_bits[-1] == 38
    s_srv, s_cli = run_local(body)
    expect = ring_matmul_public(x, w)
    if wanted is None:
        assert np.array_equal(s_srv + s_cli, expect)
    else:
        assert np.array_equal((s_srv + s_cli)[wanted], expect[wanted])
        assert not s_cli[~wanted].any()


def test_oversized_upload_batch_is_refused():
    """The server bounds a ciphertext batch by what the plan implies (count × the size
    of one upload), not by the session's 2 GiB frame limit."""
    from common.he.crt_bfv import CrtBfvClient, CrtBfvParams, CrtBfvServer
    from common.mpc.he_protocols import he_matmul, pack_blobs, upload_bound
    from common.transport import ProtocolMismatch

    params = CrtBfvParams()
    client = CrtBfvClient(params)
    server = CrtBfvServer(params, client.public_keys(), SecureRng(7))
    w = np.ones((16, 4), dtype=np.int64)
    blob = client.encrypt(0, np.zeros(params.poly_degree, np.uint64), coeffs=True)
    assert 4 + 4 + len(blob) <= upload_bound(params, 1) < 4 + 2 * (4 + len(blob))

    def body(ch: Channel):
        if ch.party == CLIENT:
            ch.send("he.mm.up", pack_blobs([blob, blob]), kind="ciphertexts")  # 1 expected
            return None
        with pytest.raises(ProtocolMismatch, match="at most"):
            he_matmul(ch, server, w, (2, 16, 4), 21, SecureRng(9))
        return "refused"

    assert run_local(body)[SERVER] == "refused"
