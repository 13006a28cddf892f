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
