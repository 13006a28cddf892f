"""`comet-bench accuracy` end to end on a tiny adapted model (the real default model
takes minutes to build; its numbers are in docs/ACCURACY.md)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from benchmarks.cli import main
from tests.comet_server.test_adapt import _toy_task, _write_csv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny_adapted(tmp_path_factory):
    from comet_server.adapt.pipeline import adapt
    from comet_server.adapt.train import Recipe
    from tests.models import tiny_encoder

    root = tmp_path_factory.mktemp("acc")
    tiny_encoder(root / "base")
    texts, labels = _toy_task(48)
    _write_csv(
        root / "d.csv", [(t, "pos" if y else "neg") for t, y in zip(texts, labels, strict=True)]
    )
    adapt(root / "base", root / "out", Recipe(30, 30, batch=16, lr=2e-3), str(root / "d.csv"),
          show_progress=False)  # fmt: skip
    return root / "out", texts, labels


def test_accuracy_table_on_a_tiny_model(tiny_adapted, monkeypatch) -> None:
    out, texts, labels = tiny_adapted
    import comet_server.adapt.data as data
    import comet_server.adapt.default as default

    monkeypatch.setattr(data, "load_tweets", lambda split: (texts[:12], labels[:12]))
    monkeypatch.setattr(default, "default_model_dir", lambda build=True: out / "comet")
    monkeypatch.setattr(default, "original_model_dir", lambda build=True: out / "original")
    res = CliRunner().invoke(main, ["accuracy", "--json", "--n-private", "4"])
    assert res.exit_code == 0, res.output
    rows = {r["row"]: r for r in json.loads(res.stdout)["rows"]}
    assert rows["plaintext original"]["n"] == 12
    for name in ("comet", "reference"):
        float_row = rows[f"plaintext {name} set (float)"]
        fixed = rows[f"fixed-point emulation, {name} set"]
        private = rows[f"private inference, {name} set"]
        assert private["n"] == 4
        # The private protocol computes what its emulation computes.
        assert private["max_abs_err_vs_emulation"] < 0.02
        assert private["agreement"] == 1.0 and fixed["agreement"] == 1.0
        assert float_row["max_abs_logit_err"] < 0.05
