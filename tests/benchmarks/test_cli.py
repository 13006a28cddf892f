"""`comet-bench ops` end to end at quick sizes (insecure dealer: fast, exact accounting)."""

import json
import warnings

import pytest
from click.testing import CliRunner

from benchmarks import ops
from benchmarks.cli import main
from common.mpc.preprocessing import InsecureDealerWarning
from common.mpc.ring import FRAC_BITS

ROW_FIELDS = {
    "op": str,
    "shape": str,
    "provider": str,
    "offline_bytes": int,
    "online_bytes": int,
    "rounds": int,
    "offline_s": float,
    "online_s": float,
    "max_abs_err": float,
    "online_bytes_per_elem": float,
}


@pytest.fixture(scope="module")
def quick_json() -> dict:
    args = ["ops", "--quick", "--json", "--provider", "insecure_dealer"]
    with warnings.catch_warnings():  # module scope: the autouse filter is not active yet
        warnings.simplefilter("ignore", InsecureDealerWarning)
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)  # progress goes to stderr: stdout is pure JSON


def test_schema(quick_json):
    assert set(quick_json) == {"ops", "meta"}
    rows = quick_json["ops"]
    assert [r["op"] for r in rows] == list(ops.OPS)
    for r in rows:
        for key, typ in ROW_FIELDS.items():
            assert isinstance(r[key], typ), (r["op"], key, r[key])
        assert r["provider"] == "insecure_dealer"
        assert r["offline_s"] >= 0 and r["online_s"] >= 0
    for r in rows:
        if r["op"] in ("mul", "square"):
            assert r["online_products_per_s"] > 0
            assert r["offline_bytes_per_elem"] > 0 and r["offline_elems_per_s"] > 0
    meta = quick_json["meta"]
    assert meta["mode"] == "quick" and meta["provider"] == "insecure_dealer"
    assert meta["machine"]["cpus"] >= 1 and meta["notes"]


def test_accuracy(quick_json):
    for r in quick_json["ops"]:
        assert r["max_abs_err"] < 1e-3 * 2.0 ** (16 - FRAC_BITS), r


def test_online_bytes_and_rounds(quick_json):
    rows = {r["op"]: r for r in quick_json["ops"]}
    n = ops.QUICK.elementwise
    heads, m, k, nn = ops.QUICK.matmul
    lrows, lk, _ = ops.QUICK.linear
    lout = ops.QUICK.linear[2]

    def wrap(count):  # an exact truncation: one bit each way per value
        return -(-count // 8)

    # each party opens x−a and y−b, then the products' wrap bits
    assert rows["mul"]["online_bytes"] == 2 * 16 * n + 2 * wrap(n)
    assert rows["square"]["online_bytes"] == 2 * 8 * n + 2 * wrap(n)
    mm_out = heads * m * nn
    assert rows["matmul"]["online_bytes"] == 2 * 8 * heads * (m * k + k * nn) + 2 * wrap(mm_out)
    # only the client's masked input, then the outputs' wrap bits
    assert rows["linear"]["online_sent_bytes_by_party"] == [
        wrap(lrows * lout),
        8 * lrows * lk + wrap(lrows * lout),
    ]
    assert rows["mean"]["rounds"] == 1  # the exact truncation of the sum
    for op in ("mul", "square", "matmul", "linear"):
        assert rows[op]["rounds"] == 2, op
    for op in ("share", "reveal"):
        assert rows[op]["rounds"] == 1, op
    for op in ("mul", "square", "matmul", "linear", "mean", "share", "reveal"):
        assert rows[op]["online_bytes"] == rows[op]["online_bytes_model"], op


def test_table_output():
    args = ["ops", "--quick", "--provider", "insecure_dealer", "--only", "mean"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "mean" in res.stdout and "max abs err" in res.stdout
    assert "[1/1]" in res.stderr and "[1/1]" not in res.stdout


def test_rng_bench_reports_both_generators():
    res = CliRunner().invoke(main, ["rng", "--json", "--words", "4096"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    for name in ("secure_chacha20", "pcg64"):
        assert out[name]["seconds"] > 0 and out[name]["gb_per_s"] > 0
    assert out["triple_batch_words"] == 8192 * 10


@pytest.mark.slow
def test_offline_bench_kinds_add_up(tmp_path, monkeypatch):
    """`comet-bench offline` splits the HE offline phase by correlation kind: the kinds'
    bytes add up to the totals, every kind costs CPU on both sides, the server's HE jobs
    ran in its worker processes, and the element counts are the plan's."""
    from benchmarks.offline import plan_elements
    from common.mpc.correlations import GroupSpec, LinearSpec, Plan

    monkeypatch.setenv("COMET_HOME", str(tmp_path))
    res = CliRunner().invoke(
        main, ["offline", "--model", "bert-tiny", "--seq-len", "4", "--he-workers", "2", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{") :])
    kinds = {k["kind"]: k for k in out["kinds"]}
    assert {"linear-masks", "wraps", "mask-groups", "matmul-triples"} <= set(kinds)
    t = out["totals"]
    # the plan-digest exchange (32 bytes each way per layer) is the only offline traffic
    # outside a kind, but for the Galois keys (client to server, once)
    assert t["galois_key_bytes"] > 0
    for way in ("bytes_up", "bytes_down"):
        rest = t[way] - sum(k[way] for k in kinds.values())
        rest -= t["galois_key_bytes"] if way == "bytes_up" else 0
        assert rest % 32 == 0 and 0 < rest <= 32 * 8
    for k in kinds.values():
        assert k["ciphertexts_up"] > 0 and k["ciphertexts_down"] > 0
        assert k["client_cpu_s"] > 0 and k["elements"] > 0
        assert k["server_cpu_s"] + k["server_worker_cpu_s"] > 0
    assert t["server_worker_cpu_s"] > 0  # the jobs ran in the workers
    # 2·batch·m·k·n MACs per matrix triple; products of a group's pairs (broadcast shapes)
    plan = Plan(
        triples=3, squares=5, wraps=7, matmuls=[(2, 4, 8, 4)],
        linears=[LinearSpec("w", 4, 16, 32)],
        groups=[GroupSpec(((4, 1), (4, 8)), ((0, 0), (0, 1)))],
    )  # fmt: skip
    assert plan_elements(plan) == {
        "linear-masks": 4 * 16 * 32, "triples": 3, "squares": 5, "wraps": 7,
        "mask-groups": 4 + 32, "matmul-triples": 2 * 2 * 4 * 8 * 4,
    }  # fmt: skip
