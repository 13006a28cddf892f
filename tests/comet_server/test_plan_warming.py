"""A server plans the shapes of its stored prepared sets when it starts."""

from __future__ import annotations

import time

import pytest

from comet_server.registry import load_models
from comet_server.service import CometService
from common.protocol.prepared import PreparedStore, SetInfo, new_set_id
from tests.models import tiny_classifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _info(model: str, card_digest: str, batch: int, seq_len: int) -> SetInfo:
    return SetInfo(
        id=new_set_id(), model=model, card_digest=card_digest, plan_digest="0" * 64,
        batch=batch, seq_len=seq_len, output="logits", provider="he", party=0,
        created=time.time(), nbytes=0,
    )  # fmt: skip


def test_stored_shapes_are_planned_at_start(tmp_path) -> None:
    models = load_models([f"tiny={tiny_classifier(tmp_path / 'tiny')}"])
    card = models["tiny"].compiled.card
    store = PreparedStore(tmp_path / "store")
    for shape in ((2, 16), (2, 16), (1, 8)):
        store.save(_info("tiny", card.digest(), *shape), {})
    store.save(_info("gone", "x", 1, 8), {})  # a model no longer served: skipped
    service = CometService(models, provider="insecure_dealer", prepared=store)
    try:
        deadline = time.monotonic() + 60
        while models["tiny"].plans.misses < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert models["tiny"].plans.misses == 2  # (1, 8) and (2, 16), once each
        assert service.warm_plans() == 2  # again: both from the cache now
        assert models["tiny"].plans.misses == 2 and models["tiny"].plans.hits == 2
    finally:
        service.shutdown()
