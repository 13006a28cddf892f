"""A private inference that fails (one failed truncation) is reported, not printed."""

from __future__ import annotations

import pytest

from tests.e2e.harness import Server, client
from tests.models import tiny_classifier

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

DEALER = "--allow-insecure-dealer"


def test_client_reports_a_failed_inference(tmp_path) -> None:
    model = tiny_classifier(tmp_path / "tiny")
    args = ("--model", str(model), DEALER)
    with Server(tmp_path, *args, module="tests.e2e.failing_server") as srv:
        res = client("--server", srv.address, DEALER, "what a great day")
        assert res.returncode == 1, res.stdout + res.stderr
        assert "failed inference" in res.stderr and "Run it again" in res.stderr
        assert "FAILED_INFERENCE" in res.stderr
        assert "positive" not in res.stdout and "negative" not in res.stdout
        assert res.stdout.strip() == ""
        json_res = client("--server", srv.address, DEALER, "--json", "what a great day")
        assert json_res.returncode == 1 and json_res.stdout.strip() == ""
    # The same model on an honest server: the check passes.
    with Server(tmp_path, *args) as srv:
        res = client("--server", srv.address, DEALER, "what a great day")
        assert res.returncode == 0, res.stderr
        assert "positive" in res.stdout or "negative" in res.stdout
