"""Prepared offline phases: storage, exactly-once use (kill points), refusals, limits,
expiry, and the client's batching of any number of texts."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from common.mpc.roles import CLIENT, SERVER
from common.protocol.prepared import (
    Limits,
    PreparedError,
    PreparedStore,
    SetInfo,
    StoreFull,
    new_set_id,
    plans_nbytes,
    pools_of,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from common.protocol.calibrate import compile_model
    from tests.models import tiny_classifier

    return compile_model(tiny_classifier(tmp_path_factory.mktemp("tiny") / "tiny"))


def _inputs(tok, texts, length):
    from common.protocol.program import ClientInput

    enc = tok(list(texts), padding="max_length", max_length=length, return_tensors="np")
    return ClientInput(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))


def _offline_pair(model, shape, keep, client):
    """Both parties' planned forward and pools of one offline phase (dealer: fast)."""
    from common.mpc.preprocessing import make_provider
    from common.protocol.run import offline_phase, plan_forward
    from common.transport import run_local

    def body(ch, role):
        w, c = (model.weights, None) if role == SERVER else (None, client)
        planned = plan_forward(role, model.card, shape, keep, w, c)
        return planned, offline_phase(ch, planned, make_provider("insecure_dealer"))

    return run_local(body, (SERVER,), (CLIENT,))


def _info(planned, card, shape, party, set_id, **kw) -> SetInfo:
    return SetInfo(
        id=set_id, model="tiny", card_digest=card.digest(), plan_digest=planned.digest(),
        batch=shape[0], seq_len=shape[1], output="logits", provider="insecure_dealer",
        party=party, created=time.time(), nbytes=plans_nbytes(planned.segments(), party),
        segments=tuple(planned.segments()), **kw,
    )  # fmt: skip


def test_a_prepared_run_equals_an_inline_run(compiled, tmp_path) -> None:
    from common.protocol.run import local_private_forward, online_phase, plan_forward
    from common.transport import run_local

    model, tok = compiled
    shape = (2, 16)
    # The offline phase needs no text: the client plans on zeros.
    dummy = _inputs(tok, ["x", "y"], 16)
    dummy.token_ids[:] = 0
    (ps, pools_s), (pc, pools_c) = _offline_pair(model, shape, np.ones(shape), dummy)
    assert ps.digest() == pc.digest()
    sid = new_set_id()
    srv, cli = PreparedStore(tmp_path / "s"), PreparedStore(tmp_path / "c")
    srv.save(_info(ps, model.card, shape, SERVER, sid), pools_s)
    cli.save(_info(pc, model.card, shape, CLIENT, sid), pools_c)
    # The stored bytes are what the store reserved.
    assert [s.nbytes for s in srv.list()] == [plans_nbytes(ps.segments(), SERVER)]
    assert cli.list()[0].nbytes > srv.list()[0].nbytes  # the client also holds r

    texts = ("what a great day", "this is awful, I hate it")
    inp = _inputs(tok, texts, 16)
    keep = inp.attention_mask

    def body(ch, role):
        store = srv if role == SERVER else cli
        w, c = (model.weights, None) if role == SERVER else (None, inp)
        planned = plan_forward(role, model.card, shape, keep, w, c)
        info, arrays = store.claim(sid)
        info.check(model.card.digest(), planned.digest(), *shape)
        return online_phase(ch, planned, pools_of(planned.segments(), arrays))

    _, prepared = run_local(body, (SERVER,), (CLIENT,))
    _, inline = local_private_forward(model, inp, provider="insecure_dealer")
    # Same program, other random shares: equal up to truncation noise (2^-16 scale).
    np.testing.assert_allclose(prepared.output, inline.output, atol=2e-3)
    assert (prepared.output.argmax(-1) == inline.output.argmax(-1)).all()
    # Used once: gone on both sides, a second use is refused.
    assert srv.list() == [] and cli.list() == []
    for store in (srv, cli):
        with pytest.raises(PreparedError, match="already used"):
            store.claim(sid)


def test_sets_for_another_card_shape_or_plan_are_refused(compiled, tmp_path) -> None:
    from common.protocol.run import plan_forward

    model, tok = compiled
    inp = _inputs(tok, ["a", "b"], 16)
    planned = plan_forward(CLIENT, model.card, (2, 16), inp.attention_mask, None, inp)
    info = _info(planned, model.card, (2, 16), CLIENT, new_set_id())
    info.check(model.card.digest(), planned.digest(), 2, 16)
    with pytest.raises(PreparedError, match="another model card"):
        info.check("0" * 64, planned.digest(), 2, 16)
    with pytest.raises(PreparedError, match=r"batch × length 2 × 16, not 2 × 32"):
        info.check(model.card.digest(), planned.digest(), 2, 32)
    with pytest.raises(PreparedError, match="another plan"):
        info.check(model.card.digest(), "f" * 64, 2, 16)
    # Arrays of another shape's plan do not rebuild this plan's pools.
    inp8 = _inputs(tok, ["a", "b"], 8)
    other = plan_forward(CLIENT, model.card, (2, 8), inp8.attention_mask, None, inp8)
    (_, pools_s), _ = _offline_pair(model, (2, 8), np.ones((2, 8)), inp8)
    store = PreparedStore(tmp_path)
    sid = new_set_id()
    srv_planned = plan_forward(SERVER, model.card, (2, 8), inp8.attention_mask, model.weights, None)
    store.save(_info(srv_planned, model.card, (2, 8), SERVER, sid), pools_s)
    _, arrays = store.claim(sid)
    with pytest.raises(PreparedError, match="does not match this plan"):
        pools_of(planned.segments(), arrays)
    assert other.digest() != planned.digest()
    with pytest.raises(PreparedError, match="malformed"):
        store.claim("../../etc/passwd")


def _fake_set(store: PreparedStore, nbytes=100, model="m", owner="", **kw) -> SetInfo:
    """A set with a tiny pool (the store does not look inside pools)."""
    from common.mpc.correlations import Pool

    U = np.uint64
    pool = Pool((np.zeros(1, U),) * 3, (np.zeros(1, U),) * 2, [], [], [])
    info = SetInfo(
        id=new_set_id(), model=model, card_digest="c", plan_digest="p", batch=1, seq_len=4,
        output="logits", provider="he", party=SERVER, created=time.time(), nbytes=nbytes,
        segments=("embed",), owner=owner, **kw,
    )  # fmt: skip
    token = store.reserve(nbytes, model, owner)
    store.save(info, {"embed": pool}, token)
    return info


def test_store_limits_expiry_and_file_modes(tmp_path) -> None:
    store = PreparedStore(tmp_path / "st", Limits(max_bytes=350, model_bytes=200, per_owner=2))
    a = _fake_set(store, 100, "m", "h1")
    _fake_set(store, 100, "m", "h2")
    with pytest.raises(StoreFull, match="quota for prepared sets of model 'm'"):
        store.reserve(100, "m", "h3")
    _fake_set(store, 100, "n", "h1")
    with pytest.raises(StoreFull, match="at most 2 prepared sets per client"):
        store.reserve(1, "o", "h1")
    with pytest.raises(StoreFull, match="store is full"):
        store.reserve(60, "o", "h4")
    # A reservation counts until released (concurrent prepares cannot overshoot).
    store.delete(a.id)
    t = store.reserve(100, "o", "h4")
    with pytest.raises(StoreFull, match="store is full"):
        store.reserve(60, "p", "h5")
    store.release(t)
    store.reserve(60, "p", "h5")
    # Modes: directories 0700, share files 0600.
    for d in ("", "ready", "claimed", "tmp"):
        assert stat.S_IMODE((tmp_path / "st" / d).stat().st_mode) == 0o700
    for f in (tmp_path / "st" / "ready").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    # Expiry: an expired set is deleted and refused.
    ex = PreparedStore(tmp_path / "ex", Limits(expiry=1000))
    old = _fake_set(ex)
    assert ex.get(old.id).expires == pytest.approx(old.created + 1000)
    gone = _fake_set(ex, expires=time.time() - 1)
    with pytest.raises(PreparedError, match="expired"):
        ex.get(gone.id)
    assert [s.id for s in ex.list()] == [old.id]


def test_concurrent_claims_succeed_once(tmp_path) -> None:
    store = PreparedStore(tmp_path)
    info = _fake_set(store)
    wins, errors = [], []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        try:
            wins.append(PreparedStore(tmp_path).claim(info.id))
        except PreparedError as e:
            errors.append(e)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(errors) == 7


KILL = """
import os, signal, sys, time
import numpy as np
from common.mpc.correlations import Pool
from common.protocol import prepared as P
point, root, action = sys.argv[1], sys.argv[2], sys.argv[3]
P._fault = lambda p: os.kill(os.getpid(), signal.SIGKILL) if p == point else None
store = P.PreparedStore(root)
U = np.uint64
pool = Pool((np.zeros(1, U),) * 3, (np.zeros(1, U),) * 2, [], [], [])
if action == "save":
    info = P.SetInfo(id="ab" * 16, model="m", card_digest="c", plan_digest="p", batch=1,
                     seq_len=4, output="logits", provider="he", party=0, created=time.time(),
                     nbytes=40, segments=("embed",))
    store.save(info, {"embed": pool})
else:
    store.claim("ab" * 16)
print("survived")
"""


@pytest.mark.parametrize("point", ["written", "claimed", "loaded"])
def test_a_kill_at_any_point_never_makes_a_set_usable_twice(tmp_path, point) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", KILL, point, str(tmp_path), action],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    sid = "ab" * 16
    res = run("save")
    if point == "written":  # killed before the rename: never usable
        assert res.returncode == -9
        assert PreparedStore(tmp_path).list() == []
        assert list((tmp_path / "tmp").iterdir()) == []  # the dead writer's file is swept
        return
    assert res.returncode == 0, res.stderr
    assert [s.id for s in PreparedStore(tmp_path).list()] == [sid]
    res = run("claim")  # SIGKILL after the claim's rename / after loading
    assert res.returncode == -9
    store = PreparedStore(tmp_path)  # sweeps the dead claimer's file
    assert store.list() == []
    assert list((tmp_path / "claimed").iterdir()) == []
    with pytest.raises(PreparedError, match="already used"):
        store.claim(sid)


def test_batches_group_similar_lengths_and_take_fitting_sets() -> None:
    from comet_client.session import plan_chunks

    lengths = [30, 5, 12, 6, 40, 7]
    chunks = plan_chunks(lengths, max_batch=2, limit=64, buckets=(16, 32, 64))
    assert [c.texts for c in chunks] == [[1, 3], [5, 2], [0, 4]]
    assert [(c.batch, c.length) for c in chunks] == [(2, 16), (2, 16), (2, 64)]
    assert sorted(i for c in chunks for i in c.texts) == list(range(6))
    # No buckets: the longest text; the server's token limit caps a bucket.
    assert [c.length for c in plan_chunks(lengths, 8, 64)] == [40]
    assert plan_chunks([5], 8, 64, buckets=(16,), max_tokens=8)[0].length == 5

    def s(b, L, t=0.0):
        return SetInfo(new_set_id(), "m", "c", "p", b, L, "logits", "he", 1, t, 1)

    small, big = s(4, 16), s(4, 32)
    chunks = plan_chunks(lengths, 8, 64, [big, small], buckets=(16, 32, 64))
    # 4 short texts take the smaller fitting set; the rest (2) run inline.
    assert [(c.texts, c.prepared) for c in chunks] == [([1, 3, 5, 2], small), ([0, 4], None)]
    assert (chunks[1].batch, chunks[1].length) == (2, 64)


def test_texts_too_long_are_named_or_cut(compiled) -> None:
    from comet_client.session import pad_rows, tokenize_each
    from comet_client.tokenizer import TransformersTokenizer
    from common.protocol.session import InvalidInput

    model, hf = compiled
    tok = TransformersTokenizer(hf)  # the interface the client's FastTokenizer has
    long = "word " * 100
    with pytest.raises(InvalidInput, match=r"text #2 \('word word.*'\) is 102 tokens"):
        tokenize_each(tok, ["fine", long], model.card)
    rows = tokenize_each(tok, ["fine", long], model.card, truncate=True)
    limit = model.card.arch.max_positions - model.card.arch.position_offset
    assert len(rows[1]) == limit and rows[1][-1] == hf.sep_token_id
    with pytest.raises(InvalidInput, match="text #1 is empty"):
        tokenize_each(tok, [" ", "x"], model.card)
    inp = pad_rows(rows[:1], 3, 8, tok)
    assert inp.token_ids.shape == (3, 8)
    assert inp.attention_mask.sum(1).tolist() == [len(rows[0]), 2, 2]  # filler rows: [CLS][SEP]


def test_hidden_lengths_give_the_same_output_for_one_product_per_score(compiled) -> None:
    from common.protocol.run import local_private_forward

    model, tok = compiled
    inp = _inputs(tok, ("what a great day", "this is awful, I hate it"), 16)
    _, shown = local_private_forward(model, inp, provider="insecure_dealer")
    # The server runs with an all-ones mask (local_private_forward passes it ones).
    _, hidden = local_private_forward(model, inp, provider="insecure_dealer", hide_lengths=True)
    np.testing.assert_allclose(hidden.output, shown.output, atol=2e-3)
    a, b = shown.meter.totals(phase="online"), hidden.meter.totals(phase="online")
    a_ = model.card.arch
    scores = 2 * a_.heads * 16 * 16 * a_.layers
    # One Beaver product per score: both openings (8 bytes each) of every score.
    assert b.sent_bytes - a.sent_bytes == 2 * 8 * scores
