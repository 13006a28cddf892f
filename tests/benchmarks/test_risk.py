"""`comet-bench risk`: the emulation's exact truncation-risk counter, per site."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchmarks.cli import main
from common.approx.backend import PlainBackend
from tests.models import tiny_classifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_counter_is_exact_and_split_by_site() -> None:
    f = 13
    ops = PlainBackend(f, track_risk=True)
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
    assert ops.truncations == 4
    with ops.scope(op="x"):
        assert ops.site() == "-.x"
    assert ops.site() == "-.-"
    assert isinstance(x, torch.Tensor)


def test_risk_json_sums_its_sites(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMET_HOME", str(tmp_path / "home"))
    model = tiny_classifier(tmp_path / "m")
    res = CliRunner().invoke(main, ["risk", "--model", str(model), "--seq-len", "16", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"total", "sites"} <= set(out)
    assert out["total"] > 0
    assert sum(out["sites"].values()) == pytest.approx(out["total"])
    layers = {k.split(".")[0] for k in out["sites"]}
    assert {"embed", "layer0", "layer1", "head"} <= layers
    # 16 tokens, not 32: the risk grows with the number of truncated values
    res32 = CliRunner().invoke(main, ["risk", "--model", str(model), "--seq-len", "32", "--json"])
    assert json.loads(res32.stdout)["total"] > out["total"]
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
