"""`comet-bench approx` and `sites` end to end at quick sizes."""

import json
import warnings

import pytest
from click.testing import CliRunner

from benchmarks.cli import main
from common.mpc.preprocessing import InsecureDealerWarning
from common.mpc.ring import FRAC_BITS

FIELDS = {"set", "fn", "shape", "online_bytes", "offline_bytes", "rounds", "max_abs_err"}


@pytest.fixture(scope="module")
def approx_json() -> dict:
    args = ["approx", "--quick", "--json", "--provider", "insecure_dealer"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureDealerWarning)
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_approx_rows(approx_json: dict) -> None:
    rows = approx_json["approx"]
    keys = {(r["set"], r["fn"]) for r in rows}
    for fn in ("rsqrt", "gelu", "softmax", "layernorm"):
        assert {("comet", fn), ("reference", fn)} <= keys
    for r in rows:
        assert set(r) >= FIELDS
        assert r["online_bytes"] > 0 and r["rounds"] > 0
    by = {(r["set"], r["fn"]): r for r in rows}
    # Our rsqrt meets its target on the SMU range; CrypTen's start does not.
    assert by[("comet", "rsqrt")]["max_rel_err"] < 2e-3 * 2.0 ** (16 - FRAC_BITS)
    assert by[("reference", "rsqrt")]["max_rel_err"] > 1e-2
    assert by[("comet", "rsqrt")]["rounds"] < 2 * by[("reference", "rsqrt")]["rounds"]
    # ~16 units of 2^-13 after the Newton steps; it varies with the random shares
    assert by[("reference", "gelu")]["max_abs_err"] < 0.05
    # Not asserted: the reference exp-softmax's max error. At f = 13 its staged
    # renormalisation collapses ~1 row in 1,000 of these synthetic far-below rows under
    # the protocol's truncation noise (an open defect, docs/BENCHMARKS.md); its typical
    # accuracy is tested against the emulation in tests/approx/test_functions.py.
    assert by[("reference", "softmax")]["rounds"] > by[("comet", "softmax")]["rounds"]
    assert by[("comet", "layernorm")]["max_abs_err"] < 0.01


def test_sites_of_a_compiled_model(tmp_path) -> None:
    import numpy as np

    from benchmarks.sites import site_rows
    from common.protocol.calibrate import approx_for, compile_loaded
    from tests.protocol.test_program import batches, tiny

    model, cfg = tiny("bert")
    compiled = compile_loaded(
        model, cfg, approx_for(tmp_path), batches(np.random.default_rng(0)), "tiny"
    )
    rows = site_rows(compiled.card)
    names = {r["site"] for r in rows}
    assert {"L0.gelu", "L0.ln1", "emb.ln", "L1.softmax.final", "pool.act"} <= names
    for r in rows:
        assert (
            r["rounds"]
            == (0 if r["degree"] == 1 else 1 if r["degree"] == 2 else 2) + 2 * r["steps"]
        )
        assert r["max_rel_err"] <= 0.26
