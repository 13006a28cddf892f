"""`comet-bench report`: both report formats become the same rows; bad files are refused."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from benchmarks.cli import main
from benchmarks.report import load_rows

CLIENT = {
    "model": "tiny",
    "cost": {
        "offline": {"layers": [{"name": "embed", "bytes_sent": 10, "bytes_received": 5,
                                "rounds": 2, "seconds": 0.5}]},
        "online": {"layers": [{"name": "embed", "bytes_sent": 3, "bytes_received": 4,
                               "rounds": 1, "seconds": 0.1},
                              {"name": "head", "bytes_sent": 1, "bytes_received": 1,
                               "rounds": 1, "seconds": 0.2}]},
    },
}  # fmt: skip
BENCH = {
    "meta": {"model": "/x/tiny", "seq_len": 8, "approx": "comet"},
    "layers": [{"layer": "embed", "offline_bytes": 15, "online_bytes": 7, "offline_s": 0.5,
                "online_s": 0.1}],
}  # fmt: skip


def test_client_report_rows_sum_both_directions() -> None:
    _, rows = load_rows(CLIENT)
    assert [r.name for r in rows] == ["embed", "head"]
    assert rows[0].bytes == {"offline": 15, "online": 7}
    assert rows[1].bytes == {"online": 2} and rows[1].seconds == {"online": 0.2}


def test_bench_report_rows() -> None:
    _, rows = load_rows(BENCH)
    assert rows[0].bytes == {"offline": 15.0, "online": 7.0}


@pytest.mark.parametrize("report", [CLIENT, BENCH])
def test_cli_writes_a_png(tmp_path, report) -> None:
    src = tmp_path / "r.json"
    src.write_text(json.dumps(report))
    res = CliRunner().invoke(main, ["report", str(src)])
    assert res.exit_code == 0, res.output
    png = tmp_path / "r.png"
    assert res.output.strip() == str(png)
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("text", ["not json", json.dumps({"rows": []})])
def test_cli_refuses_what_is_not_a_report(tmp_path, text) -> None:
    src = tmp_path / "bad.json"
    src.write_text(text)
    res = CliRunner().invoke(main, ["report", str(src)])
    assert res.exit_code == 1
    assert "not JSON" in res.output or "not a cost report" in res.output


def _net_row(model, profile, seq_len, batch=1, provider="he"):
    phase = {"bytes": 10_000_000, "bytes_sent": 6_000_000, "bytes_received": 4_000_000,
             "rounds": 100, "seconds": 2.0, "lower_bound_s": 0.5}  # fmt: skip
    layer = {"name": "embed", "bytes_sent": 1, "bytes_received": 2, "rounds": 1, "seconds": 0.1}
    return {"model": model, "approx": "comet", "profile": profile, "seq_len": seq_len,
            "batch": batch, "provider": provider, "offline": phase, "online": phase,
            "layers": {"offline": [layer], "online": [layer]}}  # fmt: skip


def test_plot_net_writes_the_charts(tmp_path) -> None:
    rows = [_net_row("tiny", p, 32) for p in ("none", "lan", "wan")]
    rows += [_net_row("tiny", "none", n, provider="insecure_dealer") for n in (32, 64)]
    src = tmp_path / "net.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + json.dumps({"ratio": 1}))
    res = CliRunner().invoke(main, ["plot-net", str(src), "--out-dir", str(tmp_path / "png")])
    assert res.exit_code == 0, res.output
    names = sorted(p.rsplit("/", 1)[-1] for p in res.output.split())
    assert names == ["net-layers-lan.png", "net-layers-none.png", "net-layers-wan.png",
                     "net-phases.png", "net-scaling.png"]  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model": 1}\n')
    res = CliRunner().invoke(main, ["plot-net", str(bad)])
    assert res.exit_code == 1 and "not a `comet-bench net` row" in res.output


def test_net_table_renders_rows_and_ratios(tmp_path) -> None:
    meas = {"rtt_ms": 0.8, "throughput_mbit": 2900.0}
    acc = {"max_abs_err": 1e-3, "cosine": 0.999999, "label_agreement": 1.0}
    rows = [dict(_net_row("tiny", "lan", 32), measured=meas, accuracy=acc),
            dict(_net_row("tiny", "lan", 32, provider="insecure_dealer"), measured=meas,
                 accuracy=acc),
            {"model": "tiny", "profile": "lan", "ratio": "reference / comet",
             "offline": {"bytes": 0.9, "rounds": 1.0, "seconds": 0.95},
             "online": {"bytes": 1.1, "rounds": 1.5, "seconds": 1.3}}]  # fmt: skip
    src = tmp_path / "net.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    res = CliRunner().invoke(main, ["net-table", str(src)])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 2 + 3 and all(ln.count("|") == 15 for ln in lines)
    assert "| tiny | comet | lan (0.8 ms, 2900) | 32×1 | 10 | 100 | 2.00 (0.50 / nan) |" in lines[2]
    assert "dealer (not measured)" in lines[3] and "| 6.0 |" in lines[3]
    assert "×1.5" in lines[4]
