"""`comet-bench risk`: the emulation's exact truncation-risk counter, per site."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchmarks.cli import main
from common.approx.backend import PlainBackend, Raw
from common.mpc.correlations import WRAP_TRIPLE_FAILURE
from tests.models import tiny_classifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_counter_is_exact_and_split_by_site() -> None:
    """Local truncation: Σ |v|/2^64 per site (the exact policy's count beside it: 0)."""
    f = 13
    ops = PlainBackend(f, track_risk=True, exact=False)
    x, y = ops.encode(np.array([3.0, -5.0])), ops.encode(np.array([2.0, 7.0]))
    with ops.scope(layer="layer0"), ops.scope(op="gelu"):
        ops.mul(x, y)
    with ops.scope(layer="head", op="linear"):
        ops.mul(x, x)
    # |x·y| at scale 2^(2f), over 2^64, per truncated value
    want_gelu = (6 + 35) * 2.0 ** (2 * f - 64)
    want_head = (9 + 25) * 2.0 ** (2 * f - 64)
    assert ops.risk_by_site == pytest.approx({"layer0.gelu": want_gelu, "head.linear": want_head})
    assert ops.truncation_risk == pytest.approx(want_gelu + want_head)
    # exact: nothing out of range, 2^-57 per value for the HE bit triple
    w = 2 * WRAP_TRIPLE_FAILURE
    assert ops.other_risk_by_site == {"layer0.gelu": w, "head.linear": w}
    assert ops.truncations == 4
    with ops.scope(op="x"):
        assert ops.site() == "-.x"
    assert ops.site() == "-.-"
    assert isinstance(x, torch.Tensor)


def test_exact_policy_counts_only_values_out_of_its_range() -> None:
    """Exact truncation fails for |v| ≥ 2^62 (counted as a certain failure), else only
    through its HE-made bit triple (2^-57 per value)."""
    ops = PlainBackend(13, track_risk=True)
    big = torch.tensor([1 << 62, -(1 << 62), (1 << 62) - 1, 5], dtype=torch.int64)
    with ops.scope(layer="l", op="o"):
        ops.trunc_many([Raw(big, 13)])
    want = 2.0 + 4 * WRAP_TRIPLE_FAILURE
    assert ops.truncation_risk == want and ops.risk_by_site == {"l.o": want}
    assert ops.other_risk_by_site["l.o"] == pytest.approx((3 * 2.0**62 + 4) / 2.0**64)
    assert ops.max_truncated == 2.0**62


def test_risk_json_sums_its_sites(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMET_HOME", str(tmp_path / "home"))
    model = tiny_classifier(tmp_path / "m")
    res = CliRunner().invoke(main, ["risk", "--model", str(model), "--seq-len", "16", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"total", "sites", "other", "max_log2_abs"} <= set(out)
    # exact truncation (the default): no value near its 2^62 limit, only the bit
    # triples' 2^-57 per value; the local policy's on the same values beside it
    assert out["meta"]["truncation"] == "exact" and 0 < out["total"] < 1e-9
    assert out["max_log2_abs"] < 62
    local = out["other"]
    assert local["truncation"] == "local" and local["total"] > 0
    assert sum(local["sites"].values()) == pytest.approx(local["total"])
    layers = {k.split(".")[0] for k in local["sites"]}
    assert {"embed", "layer0", "layer1", "head"} <= layers

    # under local truncation: 16 tokens, not 32, as the risk grows with the number of
    # truncated values
    def local_total(n: int) -> float:
        args = ["risk", "--model", str(model), "--seq-len", str(n), "--json"]
        got = json.loads(CliRunner().invoke(main, [*args, "--truncation", "local"]).stdout)
        assert got["meta"]["truncation"] == "local" and got["other"]["total"] < 1e-9
        return got["total"]

    assert local_total(32) > local_total(16) > 0
    table = CliRunner().invoke(main, ["risk", "--model", str(model), "--seq-len", "16"])
    assert table.exit_code == 0 and "layer0.softmax" in table.stdout


def test_risk_of_a_decoder(tmp_path, monkeypatch) -> None:
    """smollm2 is a decoder: a build without decoder support says so, in one line."""
    monkeypatch.setenv("COMET_HOME", str(tmp_path))
    res = CliRunner().invoke(main, ["risk", "--model", "smollm2", "--json"])
    if res.exit_code == 0:  # a build with the decoder: then it reports its risk
        assert json.loads(res.stdout)["total"] > 0
        return
    assert res.exit_code == 1 and res.exception is not None
    assert "smollm2" in res.output and "decoder" in res.output
    assert "Traceback" not in res.output
