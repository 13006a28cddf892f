"""The client's local parts of generation: prompt encoding and the cost report."""

from __future__ import annotations

import pytest

from comet_client.generation import encode_prompt, generation_cost
from common.protocol.generate import GenerationResult, StepCost
from common.protocol.session import InvalidInput
from common.transport import Meter
from common.transport.meter import Counts
from tests.models import char_tokenizer


def test_encode_prompt_plain_and_chat() -> None:
    tok = char_tokenizer()
    assert encode_prompt(tok, "ab", chat=False) == [67, 68]
    with pytest.raises(InvalidInput, match="no chat template"):
        encode_prompt(tok, "ab", chat=True)
    tok.chat_template = (
        "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
        "{% if add_generation_prompt %}>{% endif %}"
    )
    assert encode_prompt(tok, "ab", chat=True) == tok("[ab]>")["input_ids"]
    with pytest.raises(InvalidInput, match="empty prompt"):
        encode_prompt(tok, "  ", chat=False)


def test_generation_cost_report() -> None:
    def c(n: int) -> Counts:
        return Counts(
            sent_bytes=n, recv_bytes=2 * n, sent_msgs=1, recv_msgs=1, rounds=n, seconds=1.0
        )

    res = GenerationResult(
        token_ids=[5, 6, 7],
        costs=[StepCost("prefill", 4, 4, c(40), c(400)), StepCost("token", 1, 5, c(10), c(100)),
               StepCost("token", 1, 6, c(20), c(200))],
    )  # fmt: skip
    rep = generation_cost(res, Meter())
    assert rep["prefill"]["positions"] == 4 and rep["prefill"]["online"]["bytes_sent"] == 400
    assert [t["context"] for t in rep["tokens"]] == [5, 6]
    assert rep["per_token"]["offline"]["bytes_received"] == 30
    assert rep["per_token"]["online"]["rounds"] == 150
    assert set(rep["total"]) == {"setup", "offline", "online"}
