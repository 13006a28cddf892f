"""What both ends of a networked session agree on before the protocol runs.

The session itself (gRPC streams, roles) lives in `comet_server` and `comet_client`;
this module holds the version, the checks of the public `Start` parameters — run by the
client before sending and by the server on receipt — and the output variants.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from common.protocol.card import ModelCard

PROTOCOL_VERSION = 7
OUTPUTS = ("logits", "hidden")


class InvalidInput(ValueError):
    """The public shape / mask / output request cannot be run on this model."""


def resolve_output(card: ModelCard, output: str) -> str:
    """`auto` → logits for a classifier, hidden states for a bare encoder."""
    if output == "auto":
        return "logits" if card.arch.head == "classifier" else "hidden"
    if output not in OUTPUTS:
        raise InvalidInput(f"unknown output {output!r}; choose from auto, {', '.join(OUTPUTS)}")
    if output == "logits" and card.arch.head != "classifier":
        raise InvalidInput(f"model {card.name!r} has no classifier head: use --output hidden")
    return output


def card_for_output(card: ModelCard, output: str) -> ModelCard:
    """The card the program runs for `output` (hidden: the encoder without its head)."""
    if output == "hidden" and card.arch.head != "none":
        return replace(card, arch=replace(card.arch, head="none"))
    return card


def check_start(
    card: ModelCard, batch: int, seq_len: int, mask: NDArray, max_batch: int
) -> NDArray[np.int64]:
    """Validate (batch, seq_len, mask) for `card`; returns the mask as (batch, seq_len).

    Errors name the limit that was crossed, for a person to read.
    """
    if batch < 1 or seq_len < 1:
        raise InvalidInput("empty input: at least one text of at least one token is needed")
    if batch > max_batch:
        raise InvalidInput(f"batch of {batch} texts exceeds this server's limit of {max_batch}")
    limit = card.arch.max_positions - card.arch.position_offset
    if seq_len > limit:
        raise InvalidInput(
            f"text too long for model {card.name!r}: {seq_len} tokens, the model takes at most "
            f"{limit}"
        )
    m = np.asarray(mask)
    if m.size != batch * seq_len:
        raise InvalidInput(
            f"attention mask has {m.size} entries, expected batch × seq_len = {batch * seq_len}"
        )
    m = m.reshape(batch, seq_len).astype(np.int64)
    if not np.isin(m, (0, 1)).all():
        raise InvalidInput("attention mask entries must be 0 or 1")
    if (m.sum(axis=1) == 0).any():
        raise InvalidInput("empty input: a text has no tokens")
    return m
